"""An org's ticket-reference pattern can never stall the gateway with backtracking.

Refused when saved: backreferences, nested quantifiers (the classic `(a+)+$`), repeated
alternatives and too many long quantifiers; and every pattern runs on a bounded prefix
of the justification.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessInvalid, AccessStore, OrgSettings, RequestState, save_settings
from gateway.access.settings import MAX_TICKET_SCAN, load_settings, ticket_pattern_problem
from gateway.access.store import check_justification
from tests.gateway.access.conftest import ORG, SAM

EVIL = [
    r"(a+)+$",
    r"^(a+)+$",
    r"(a*)*b",
    r"(?:a|aa)+$",
    r"(a|ab)*c",
    r"(x+x+)+y",
    r"((ab)*)+$",
    r"(?=(a+))+b",
    r"(\w+)\s\1",
    r"(a)?(?(1)b|c)",
    r"\d+\d+\d+x",
    r"[A-Z]+.*[0-9]+.*-",
]
SAFE = [
    r"\bSUP-[0-9]+\b",
    r"^[A-Z]+-[0-9]+",
    r"(JIRA|SUP)-\d+",
    r"^[A-Z]{2,10}-\d{1,6}$",
    r"(?:ab)+c",
    r"[A-Z]+[A-Z]+!",
    r"#[0-9]{1,8}",
]


@pytest.mark.parametrize("pattern", EVIL)
def test_evil_patterns_are_refused_by_merged(pattern: str) -> None:
    assert ticket_pattern_problem(pattern) is not None
    with pytest.raises(AccessInvalid) as caught:
        OrgSettings().merged({"ticket_pattern": pattern})
    assert caught.value.code == "invalid_settings"
    assert "ticket_pattern" in caught.value.reason


@pytest.mark.parametrize("pattern", SAFE)
def test_ordinary_ticket_patterns_are_accepted(pattern: str) -> None:
    assert ticket_pattern_problem(pattern) is None
    assert OrgSettings().merged({"ticket_pattern": pattern}).ticket_pattern == pattern


@pytest.mark.parametrize("pattern", SAFE)
def test_accepted_patterns_stay_fast_on_hostile_justifications(pattern: str) -> None:
    settings = OrgSettings(ticket_pattern=pattern, justification_min_length=0)
    for filler in ("A", "1", "a", "AB", "A-", "#1"):
        hostile = filler * (2000 // len(filler))
        started = time.perf_counter()
        with contextlib.suppress(AccessInvalid):  # found or not: only the time matters here
            check_justification(hostile + "\u00a7", settings)
        assert time.perf_counter() - started < 0.5, (pattern, filler)


async def test_saving_an_evil_pattern_stores_nothing(directory: aioredis.Redis) -> None:
    before = await directory.hget(keys.org(ORG), "settings")
    with pytest.raises(AccessInvalid):
        await save_settings(directory, ORG, OrgSettings(ticket_pattern=r"(a+)+$"))
    assert await directory.hget(keys.org(ORG), "settings") == before


async def test_an_evil_pattern_already_stored_refuses_filing(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    # Written behind the gateway's back (an older version, a hand edit): fail closed.
    await directory.hset(keys.org(ORG), "settings", json.dumps({"ticket_pattern": r"(a+)+$"}))
    with pytest.raises(AccessInvalid) as caught:
        await load_settings(directory, ORG)
    assert caught.value.code == "invalid_settings"
    with pytest.raises(AccessInvalid):
        await store.file(
            SAM, org=ORG, member="bob", justification="a" * 64 + "!", duration_s=600,
            scope="read",
        )  # fmt: skip
    assert await directory.zcard(keys.org_requests(ORG)) == 0


async def test_the_ticket_must_be_named_near_the_start(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await save_settings(directory, ORG, OrgSettings(ticket_pattern=r"\bSUP-[0-9]+\b"))
    late = "x" * MAX_TICKET_SCAN + " SUP-12"
    with pytest.raises(AccessInvalid) as caught:
        await store.file(SAM, org=ORG, member="bob", justification=late, duration_s=600,
                         scope="read")  # fmt: skip
    assert caught.value.code == "ticket_required"
    assert f"first {MAX_TICKET_SCAN} characters" in caught.value.reason
    early = "SUP-12 " + "x" * MAX_TICKET_SCAN
    request = await store.file(SAM, org=ORG, member="bob", justification=early, duration_s=600,
                               scope="read")  # fmt: skip
    assert request.state is RequestState.PENDING
