from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.accounts.totp import TotpVerifier, code_at, matching_step
from gateway.clock import ManualClock

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def test_one_step_of_skew_either_way() -> None:
    now = 1_800_000_015.0
    step = int(now // 30)
    assert matching_step(SECRET, code_at(SECRET, now), now) == step
    assert matching_step(SECRET, code_at(SECRET, now - 30), now) == step - 1
    assert matching_step(SECRET, code_at(SECRET, now + 30), now) == step + 1
    assert matching_step(SECRET, code_at(SECRET, now - 60), now) is None
    assert matching_step(SECRET, code_at(SECRET, now + 60), now) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", " 12345", "12345\n", "١٢٣٤٥٦"])
def test_malformed_codes_never_match(code: str) -> None:
    assert matching_step(SECRET, code, 1_800_000_000.0) is None


async def test_each_step_once(redis: aioredis.Redis, clock: ManualClock) -> None:
    verifier = TotpVerifier(redis, clock)
    code = code_at(SECRET, clock.now())
    assert await verifier.verify("staff:sam", SECRET, code)
    assert not await verifier.verify("staff:sam", SECRET, code)
    # Another account's steps are its own.
    assert await verifier.verify("staff:kim", SECRET, code)


async def test_older_step_refused_after_newer_used(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    verifier = TotpVerifier(redis, clock)
    newer = code_at(SECRET, clock.now() + 30)
    older = code_at(SECRET, clock.now())
    assert await verifier.verify("staff:sam", SECRET, newer)
    assert not await verifier.verify("staff:sam", SECRET, older)


async def test_replay_from_two_instances_sharing_redis(
    redis_url: str, redis: aioredis.Redis, clock: ManualClock
) -> None:
    first: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    second: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    try:
        one, two = TotpVerifier(first, clock), TotpVerifier(second, clock)
        code = code_at(SECRET, clock.now())
        results = await asyncio.gather(
            *(v.verify("staff:sam", SECRET, code) for v in (one, two) * 10)
        )
        assert sorted(results) == [False] * 19 + [True]
    finally:
        await first.aclose()
        await second.aclose()
