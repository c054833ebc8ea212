"""Justifications and comments that cannot be stored or mailed are refused up front, clearly,
and change nothing (a lone surrogate, which JSON allows, or a control character)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessInvalid, AccessStore, RequestState
from tests.gateway.access.conftest import ALICE, ORG, SAM, approved

HOSTILE = ["ticket 5 \ud800 broken", "ticket 5 \udc80", "ticket 5 \x00 nul", "ticket 5 \x1b[2J"]


@pytest.mark.parametrize("text", HOSTILE)
async def test_a_hostile_justification_is_refused_and_nothing_is_filed(
    store: AccessStore, directory: aioredis.Redis, text: str
) -> None:
    with pytest.raises(AccessInvalid) as refused:
        await store.file(
            SAM, org=ORG, member="bob", justification=text, duration_s=600, scope="read"
        )
    assert refused.value.code == "invalid_justification"
    assert await directory.zcard(keys.org_requests(ORG)) == 0


@pytest.mark.parametrize("text", HOSTILE)
async def test_a_hostile_comment_is_refused_and_nothing_changes(
    store: AccessStore, text: str
) -> None:
    filed = await store.file(
        SAM, org=ORG, member="bob", justification="ticket 5: fine", duration_s=600, scope="read"
    )
    with pytest.raises(AccessInvalid) as refused:
        await store.approve(filed.id, ALICE, comment=text)
    assert refused.value.code == "invalid_comment"
    with pytest.raises(AccessInvalid):
        await store.deny(filed.id, ALICE, comment=text)
    with pytest.raises(AccessInvalid):
        await store.cancel(filed.id, SAM, comment=text)
    after = await store.require(filed.id)
    assert after.state is RequestState.PENDING
    assert after.approvals == ()
    assert len(await store.history(filed.id)) == 1  # filed, nothing since


async def test_a_hostile_revoke_comment_leaves_the_grant_live(store: AccessStore) -> None:
    grant_id = await approved(store)
    with pytest.raises(AccessInvalid):
        await store.revoke(grant_id, ALICE, comment="done \ud800")
    assert (await store.require(grant_id)).state is RequestState.APPROVED


async def test_text_with_tabs_line_breaks_and_emoji_is_kept(store: AccessStore) -> None:
    text = "ticket 5:\n\tcheckout fails \N{GRINNING FACE}\r\nsee log"
    filed = await store.file(
        SAM, org=ORG, member="bob", justification=text, duration_s=600, scope="read"
    )
    assert (await store.require(filed.id)).justification == text
    await store.approve(filed.id, ALICE, comment="ok \N{GRINNING FACE}\n")
    history = await store.history(filed.id)
    assert history[-2].comment == "ok \N{GRINNING FACE}\n"
