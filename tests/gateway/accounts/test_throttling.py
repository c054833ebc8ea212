from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway.accounts.throttling import PasswordThrottle, TotpLockout
from gateway.clock import ManualClock


async def test_account_delay_grows_and_is_forgotten(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    throttle = PasswordThrottle(redis, clock)
    for _ in range(3):
        assert await throttle.begin("a@x.example", "198.51.100.1") == 0
    # Three free failures; then 1, 2, 4 s between attempts.
    assert await throttle.begin("a@x.example", "198.51.100.2") == 1
    clock.advance(1)
    assert await throttle.begin("a@x.example", "198.51.100.3") == 0
    assert await throttle.begin("a@x.example", "198.51.100.3") == 2
    clock.advance(2)
    assert await throttle.begin("a@x.example", "198.51.100.3") == 0
    assert await throttle.begin("a@x.example", "198.51.100.3") == 4
    # No hard lock: after an hour without failures the count is forgotten.
    clock.advance(3601)
    assert await throttle.begin("a@x.example", "198.51.100.3") == 0
    assert await throttle.begin("a@x.example", "198.51.100.3") == 0


async def test_delay_is_capped(redis: aioredis.Redis, clock: ManualClock) -> None:
    throttle = PasswordThrottle(redis, clock)
    admitted = 0
    while admitted < 20:
        wait = await throttle.begin("a@x.example", "198.51.100.1")
        if wait:
            clock.advance(wait)
        else:
            admitted += 1
    assert await throttle.begin("a@x.example", "198.51.100.1") == 300


async def test_address_throttled_across_accounts(redis: aioredis.Redis, clock: ManualClock) -> None:
    throttle = PasswordThrottle(redis, clock)
    for i in range(10):
        assert await throttle.begin(f"user{i}@x.example", "198.51.100.9") == 0
    assert await throttle.begin("fresh@x.example", "198.51.100.9") == 1
    assert await throttle.begin("fresh@x.example", "198.51.100.10") == 0


async def test_success_resets_account_and_forgives_address(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    throttle = PasswordThrottle(redis, clock)
    for _ in range(3):
        await throttle.begin("a@x.example", "198.51.100.1")
    await throttle.succeeded("a@x.example", "198.51.100.1")
    assert await throttle.begin("a@x.example", "198.51.100.1") == 0


async def test_concurrent_guesses_cannot_slip_through(
    redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        throttles = [PasswordThrottle(c, clock) for c in clients]
        waits = await asyncio.gather(
            *(throttles[i % 4].begin("a@x.example", f"198.51.100.{i}") for i in range(40))
        )
        assert waits.count(0) == 3  # only the free ones: the clock did not move
    finally:
        for client in clients:
            await client.aclose()


async def test_totp_lock_after_five_failures_for_fifteen_minutes(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    lockout = TotpLockout(redis, clock)
    for attempt in range(5):
        assert await lockout.begin("staff:sam") == 0
        locked = await lockout.failed("staff:sam")
        assert locked is (attempt == 4)
    assert await lockout.begin("staff:sam") == 900
    assert await lockout.locked_for("staff:sam") == 900
    clock.advance(899)
    assert await lockout.begin("staff:sam") == 1
    clock.advance(1)
    assert await lockout.begin("staff:sam") == 0
    assert await lockout.locked_for("staff:sam") == 0


async def test_totp_failures_outside_window_forgotten(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    lockout = TotpLockout(redis, clock)
    for _ in range(4):
        await lockout.begin("staff:sam")
        await lockout.failed("staff:sam")
    clock.advance(901)
    for _ in range(4):
        assert await lockout.begin("staff:sam") == 0
        assert not await lockout.failed("staff:sam")


async def test_concurrent_totp_attempts_at_most_five(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    lockout = TotpLockout(redis, clock)
    results = await asyncio.gather(*(lockout.begin("staff:sam") for _ in range(20)))
    assert results.count(0) == 5
    assert all(r == 900 for r in results if r)


async def test_address_throttle_holds_across_one_ipv6_prefix(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    # One client holds a whole /64: rotating the interface id is not a new client.
    throttle = PasswordThrottle(redis, clock)
    for i in range(10):
        assert await throttle.begin(f"user{i}@x.example", f"2001:db8:1:2::{i + 1:x}") == 0
    assert await throttle.begin("fresh@x.example", "2001:db8:1:2:ffff:ffff:ffff:ffff") == 1
    # Another /64 is another client.
    assert await throttle.begin("fresh@x.example", "2001:db8:1:3::1") == 0


async def test_address_throttle_one_key_per_address_whatever_its_spelling(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    throttle = PasswordThrottle(redis, clock)
    spellings = ["198.51.100.7", "::ffff:198.51.100.7", "::FFFF:c633:6407"]
    for i in range(10):
        assert await throttle.begin(f"user{i}@x.example", spellings[i % 3]) == 0
    for spelling in spellings:
        assert await throttle.begin("fresh@x.example", spelling) == 1
    await throttle.succeeded("user0@x.example", "::ffff:198.51.100.7")
    # The success forgave the one address (its attempt), under whichever spelling.
    assert await throttle.begin("fresh@x.example", "198.51.100.7") == 0
