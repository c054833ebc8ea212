"""An approval is bound by the org's rules in force when it is given, not those at filing:
approvals required raised since are required, a maximum duration lowered since caps the grant,
and settings that cannot be read refuse the approval."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessInvalid, AccessStore, OrgSettings, RequestState, save_settings
from gateway.clock import ManualClock
from tests.gateway.access.conftest import ALICE, CAROL, ORG, SAM


async def _filed(store: AccessStore, duration_s: int = 3600) -> str:
    filed = await store.file(
        SAM, org=ORG, member="bob", justification="ticket 7: sync broken",
        duration_s=duration_s, scope="write",
    )  # fmt: skip
    assert filed.approvals_required == 1
    return filed.id


async def test_approvals_required_raised_after_filing_are_required(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    request_id = await _filed(store)
    await save_settings(directory, ORG, OrgSettings(approvals_required=2))
    after_one = await store.approve(request_id, ALICE)
    assert after_one.state is RequestState.PENDING
    assert after_one.approvals_required == 2
    assert (await store.check_grant(SAM.key, ORG)).grant is None
    after_two = await store.approve(request_id, CAROL)
    assert after_two.state is RequestState.APPROVED


async def test_a_maximum_lowered_after_filing_caps_the_grant(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    request_id = await _filed(store, duration_s=4 * 3600)
    await save_settings(directory, ORG, OrgSettings(max_duration_s=600))
    granted = await store.approve(request_id, ALICE)
    assert granted.duration_s == 600
    assert granted.expires_at == pytest.approx(clock.now() + 600)


async def test_rules_loosened_after_filing_do_not_loosen_the_request(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await save_settings(directory, ORG, OrgSettings(approvals_required=2))
    filed = await store.file(
        SAM, org=ORG, member="bob", justification="ticket 7: sync broken",
        duration_s=600, scope="write",
    )  # fmt: skip
    await save_settings(directory, ORG, OrgSettings(approvals_required=1, max_duration_s=7200))
    after_one = await store.approve(filed.id, ALICE)
    assert after_one.state is RequestState.PENDING
    assert (await store.approve(filed.id, CAROL)).duration_s == 600


async def test_unreadable_settings_refuse_the_approval(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    request_id = await _filed(store)
    await directory.hset(keys.org(ORG), "settings", "{not json")
    with pytest.raises(AccessInvalid):
        await store.approve(request_id, ALICE)
    found = await store.require(request_id)
    assert found.state is RequestState.PENDING
    assert found.approvals == ()
