"""Races: concurrent transitions over separate Redis connections, released together by a
barrier, many times over; each run must end in one defined state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access import (
    AccessError,
    AccessRequest,
    AccessStore,
    OrgSettings,
    RequestState,
    save_settings,
)
from gateway.clock import ManualClock
from tests.gateway.access.conftest import ALICE, CAROL, ERIN, ORG, SAM, member

ROUNDS = 50


async def together(*moves: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run the moves at the same instant; each result is its value or its AccessError."""
    barrier = asyncio.Barrier(len(moves))

    async def one(move: Callable[[], Awaitable[Any]]) -> Any:
        await barrier.wait()
        try:
            return await move()
        except AccessError as exc:
            return exc

    return await asyncio.gather(*(one(m) for m in moves))


def codes(results: list[Any]) -> list[str]:
    return sorted(r.code if isinstance(r, AccessError) else "ok" for r in results)


async def approved_at_once(
    a: AccessStore, b: AccessStore, rid: str
) -> tuple[list[str], AccessRequest]:
    """Alice (through `a`) and Carol (through `b`) approve `rid` at the same instant: the
    codes of both moves, and the request after them."""
    results = await together(partial(a.approve, rid, ALICE), partial(b.approve, rid, CAROL))
    return codes(results), await a.require(rid)


async def new_request(store: AccessStore, member: str = "bob", **extra: Any) -> str:
    request = await store.file(
        SAM,
        org=ORG,
        member=member,
        justification="ticket 99: the export is broken",
        duration_s=extra.get("duration_s", 3600),
        scope=extra.get("scope", "write"),
    )
    return request.id


async def actions(redis: aioredis.Redis, rid: str) -> list[str]:
    raw = await redis.lrange(keys.request_history(rid), 0, -1)
    return [str(json.loads(item)["action"]) for item in raw]


async def test_two_approvers_at_once(stores: list[AccessStore], directory: aioredis.Redis) -> None:
    a, b = stores[0], stores[1]
    for _ in range(ROUNDS):
        rid = await new_request(a)
        moves, request = await approved_at_once(a, b, rid)
        assert moves == ["ok", "wrong_state"]
        assert request.state is RequestState.APPROVED
        assert len(request.approvals) == 1
        assert (await actions(directory, rid)).count("approved") == 1
        await a.revoke(rid, SAM)


async def test_approve_versus_revoke(stores: list[AccessStore], directory: aioredis.Redis) -> None:
    a, b = stores[0], stores[1]
    outcomes = set()
    for _ in range(ROUNDS):
        rid = await new_request(a)
        approve, revoke = await together(
            partial(a.approve, rid, ALICE), partial(b.revoke, rid, CAROL)
        )
        assert not isinstance(approve, AccessError)
        state = (await a.require(rid)).state
        if isinstance(revoke, AccessError):
            # The revoke came first and found nothing live: the approval stands.
            assert revoke.code == "wrong_state"
            assert state is RequestState.APPROVED
            await a.revoke(rid, SAM)
        else:
            assert state is RequestState.REVOKED
            assert await actions(directory, rid) == ["filed", "approval", "approved", "revoked"]
        outcomes.add(state)
        assert (await a.check_grant(SAM.key, ORG)).grant is None
    assert outcomes <= {RequestState.APPROVED, RequestState.REVOKED}


async def test_approve_versus_lapse(
    directory: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    # The approver's clock is a hair before the lapse time, the sweeper's at it.
    approver_clock, sweeper_clock = ManualClock(clock.now()), ManualClock(clock.now())
    a_client, b_client = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    approver, sweeper = AccessStore(a_client, approver_clock), AccessStore(b_client, sweeper_clock)
    seen = set()
    try:
        for _ in range(ROUNDS):
            filed = await approver.file(
                SAM, org=ORG, member="bob", justification="ticket 12: broken page",
                duration_s=600, scope="read",
            )  # fmt: skip
            approver_clock.set(filed.lapses_at - 0.01)
            sweeper_clock.set(filed.lapses_at)
            approve, swept = await together(
                partial(approver.approve, filed.id, ALICE), partial(sweeper.sweep, filed.id)
            )
            state = (await approver.require(filed.id)).state
            if isinstance(approve, AccessError):
                assert approve.code == "wrong_state"
                assert swept == "lapsed"
                assert state is RequestState.LAPSED
            else:
                assert swept == "approved"
                assert state is RequestState.APPROVED
                await approver.revoke(filed.id, SAM)
            seen.add(state)
            history = await actions(directory, filed.id)
            assert history.count("lapsed") + history.count("approved") == 1
            approver_clock.set(clock.now())
            sweeper_clock.set(clock.now())
    finally:
        await a_client.aclose()
        await b_client.aclose()
    assert seen <= {RequestState.LAPSED, RequestState.APPROVED}


async def test_n_approvals_at_once(stores: list[AccessStore], directory: aioredis.Redis) -> None:
    await save_settings(directory, ORG, OrgSettings(approvals_required=3))
    await directory.hset(keys.member(ORG, "frank"), "role", "admin")
    people = [ALICE, CAROL, ERIN, member(ORG, "frank", "admin")]
    for _ in range(ROUNDS):
        rid = await new_request(stores[0], duration_s=7200)
        durations = [3600, 1800, 5400, 7200]
        results = await together(
            *(
                partial(s.approve, rid, p, duration_s=d)
                for s, p, d in zip(stores, people, durations, strict=False)
            )
        )
        assert codes(results) == ["ok", "ok", "ok", "wrong_state"]
        request = await stores[0].require(rid)
        assert request.state is RequestState.APPROVED
        assert len(request.approvals) == 3
        winners = [
            d for r, d in zip(results, durations, strict=True) if not isinstance(r, AccessError)
        ]
        assert request.duration_s == min(winners)
        assert (await actions(directory, rid)).count("approved") == 1
        await stores[0].revoke(rid, SAM)


async def test_two_requests_approved_at_once_give_one_live_grant(
    stores: list[AccessStore], directory: aioredis.Redis
) -> None:
    a, b = stores[0], stores[1]
    for _ in range(ROUNDS):
        first = await new_request(a)
        second = await new_request(a, member="frank")
        results = await together(
            partial(a.approve, first, ALICE), partial(b.approve, second, CAROL)
        )
        assert codes(results) == ["live_grant_exists", "ok"]
        states = {(await a.require(r)).state for r in (first, second)}
        assert states == {RequestState.APPROVED, RequestState.PENDING}
        live = await a.check_grant(SAM.key, ORG)
        assert live.grant is not None
        await a.revoke(live.grant.grant_id, SAM)
        loser = second if live.grant.grant_id == first else first
        await a.cancel(loser, SAM)


async def test_revoke_all_versus_approve(
    stores: list[AccessStore], directory: aioredis.Redis
) -> None:
    a, b = stores[0], stores[1]
    for _ in range(ROUNDS):
        rid = await new_request(a)
        approve, revoked = await together(
            partial(a.approve, rid, CAROL), partial(b.revoke_all, ORG, ALICE)
        )
        assert not isinstance(approve, AccessError)
        state = (await a.require(rid)).state
        assert state is (RequestState.REVOKED if revoked == [rid] else RequestState.APPROVED)
        if state is RequestState.APPROVED:
            await a.revoke(rid, SAM)
