"""Session epochs against real Redis: ending every session of an account beats a login
under way, and a session made under an old epoch is refused wherever it is used."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts import Accounts, PasswordHasher, ProvenPassword, open_accounts
from gateway.accounts.totp import code_at
from gateway.clock import ManualClock
from gateway.config import Sessions
from gateway.sessions.app_sessions import AppSessions
from gateway.sessions.ending import end_sessions_of
from gateway.sessions.epochs import epoch_value, made_under_current_epoch
from gateway.sessions.records import create_login_record, live_record, sid_of

LIMITS = Sessions(idle_timeout_s=600, absolute_lifetime_s=3600, mfa_max_age_s=300)
SECRET = "JBSWY3DPEHPK3PXPSAMTESTSECRET234"
PASSWORD = "a-long-test-password"
EMAIL = "sam@vendor.example"
KEY = "staff:sam"
IP = "198.51.100.7"
TTL = 3660


@pytest.fixture
async def accounts(redis: aioredis.Redis, clock: ManualClock, tmp_path: Path) -> Accounts:
    accounts = open_accounts(redis, clock, tmp_path, hasher=PasswordHasher(log2_n=10))
    await accounts.store.put_staff("sam", EMAIL, "Sam")
    await accounts.store.set_password(KEY, PASSWORD)
    await accounts.store.set_totp_secret(KEY, SECRET)
    return accounts


@pytest.fixture
async def second_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def login_record(clock: ManualClock, epoch: object, principal: str = KEY) -> dict[str, Any]:
    now = clock.now()
    return {
        "principal": principal,
        "created_at": now,
        "last_seen": now,
        "login_at": now,
        "mfa_at": now,
        "epoch": epoch,
        "csrf": "c" * 43,
    }


async def credentials_proven(accounts: Accounts, clock: ManualClock) -> ProvenPassword:
    """Both steps of a login, up to (not including) saving its session."""
    proven = await accounts.login.password(EMAIL, PASSWORD, IP)
    await accounts.login.totp(KEY, code_at(SECRET, clock.now()))
    return proven


async def no_session_of(redis: aioredis.Redis, sid: str) -> bool:
    return not await redis.exists(keys.console_session(sid)) and not await redis.sismember(
        keys.principal_sessions(KEY), sid
    )


async def test_login_saves_under_the_epoch_it_read(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    proven = await credentials_proven(accounts, clock)
    assert proven.account.key == KEY
    assert proven.session_epoch == 1  # the fixture's password reset ended sessions once
    assert await create_login_record(redis, "s1", login_record(clock, proven.session_epoch), TTL)
    assert await redis.sismember(keys.principal_sessions(KEY), "s1")
    found = await live_record(redis, "s1", clock, LIMITS)
    assert found is not None
    assert found["epoch"] == 1


Ender = Callable[[Accounts], Awaitable[object]]
ENDERS: dict[str, Ender] = {
    "end sessions": lambda accounts: accounts.store.end_sessions(KEY),
    "disable": lambda accounts: accounts.store.set_disabled(KEY, True),
    "password reset": lambda accounts: accounts.store.set_password(KEY, "another-long-password"),
}


@pytest.mark.parametrize("ender", ENDERS.values(), ids=ENDERS.keys())
async def test_ending_after_the_credential_check_refuses_the_save(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock, ender: Ender
) -> None:
    # The race, step by step: the password and TOTP were verified (epoch read before),
    # then every session of the account is ended, then the login saves its session.
    proven = await credentials_proven(accounts, clock)
    await ender(accounts)
    saved = await create_login_record(redis, "s1", login_record(clock, proven.session_epoch), TTL)
    assert not saved
    assert await no_session_of(redis, "s1")
    assert epoch_value(await redis.get(keys.session_epoch(KEY))) == proven.session_epoch + 1


async def test_a_session_saved_before_the_end_is_ended_by_it(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    proven = await credentials_proven(accounts, clock)
    assert await create_login_record(redis, "s1", login_record(clock, proven.session_epoch), TTL)
    await redis.set(keys.app_session("a1"), "{}")
    await redis.sadd(keys.app_sessions_of("s1"), "a1")
    assert await accounts.store.end_sessions(KEY) == 1
    assert await no_session_of(redis, "s1")
    assert not await redis.exists(keys.app_session("a1"), keys.app_sessions_of("s1"))
    assert await live_record(redis, "s1", clock, LIMITS) is None


async def test_save_and_end_racing_over_separate_connections(
    accounts: Accounts,
    redis: aioredis.Redis,
    second_client: aioredis.Redis,
    clock: ManualClock,
) -> None:
    outcomes = {"saved, then ended": 0, "refused": 0}
    for round_ in range(50):
        found = await accounts.store.by_email_with_epoch(EMAIL)
        assert found is not None
        epoch = found[1]
        sid = f"race-{round_}"
        barrier = asyncio.Barrier(2)

        async def log_in(
            barrier: asyncio.Barrier = barrier, sid: str = sid, epoch: int = epoch
        ) -> bool:
            await barrier.wait()
            return await create_login_record(redis, sid, login_record(clock, epoch), TTL)

        async def end_all(barrier: asyncio.Barrier = barrier) -> int:
            await barrier.wait()
            return await end_sessions_of(second_client, KEY)

        # Alternate who reaches the barrier last (and so runs on first).
        if round_ % 2:
            saved, ended = await asyncio.gather(log_in(), end_all())
        else:
            ended, saved = await asyncio.gather(end_all(), log_in())
        # SECURITY: whichever came first, no session of the old epoch survives.
        assert await no_session_of(redis, sid), (round_, saved, ended)
        assert await live_record(redis, sid, clock, LIMITS) is None
        # A save that won was ended by the end; one that lost wrote nothing.
        assert ended == (1 if saved else 0), (round_, saved, ended)
        outcomes["saved, then ended" if saved else "refused"] += 1
    assert sum(outcomes.values()) == 50
    assert epoch_value(await redis.get(keys.session_epoch(KEY))) == 1 + 50


async def test_epoch_read_with_the_account_in_one_snapshot(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    found = await accounts.store.by_email_with_epoch("SAM@vendor.example")
    assert found is not None
    assert found[0].key == KEY
    assert found[1] == 1
    assert await accounts.store.by_email_with_epoch("nobody@vendor.example") is None
    assert await accounts.store.by_email_with_epoch("not an email") is None
    await redis.set(keys.session_epoch(KEY), "not-a-number")
    with pytest.raises(Exception, match="damaged"):
        await accounts.store.by_email_with_epoch(EMAIL)


async def test_enabling_again_does_not_revive_old_sessions(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    old = login_record(clock, 1)
    await redis.set(keys.console_session("old"), json.dumps(old))
    await accounts.store.set_disabled(KEY, True)
    await accounts.store.set_disabled(KEY, False)
    # Written back by any path (a restored dump, a stale writer): dead at first use.
    await redis.set(keys.console_session("old"), json.dumps(old))
    assert await live_record(redis, "old", clock, LIMITS) is None
    assert not await redis.exists(keys.console_session("old"))
    proven = await credentials_proven(accounts, clock)
    assert proven.session_epoch == 2
    assert await create_login_record(redis, "new", login_record(clock, 2), TTL)
    assert await live_record(redis, "new", clock, LIMITS) is not None


@pytest.mark.parametrize(
    ("made_under", "current"),
    [
        (None, b"1"),  # a logged-in record without its epoch
        ("1", b"1"),  # a string is no epoch
        (True, b"1"),  # nor is a boolean
        (0, b"1"),  # an older epoch
        (2, b"1"),  # nor a newer one
        (1, b"x"),  # a damaged counter
        (1, b"-1"),
        (1, b"9" * 21),
    ],
)
async def test_records_not_made_under_the_current_epoch_are_dead(
    redis: aioredis.Redis, clock: ManualClock, made_under: object, current: bytes
) -> None:
    assert not made_under_current_epoch({"epoch": made_under}, current)
    record = login_record(clock, made_under)
    if made_under is None:
        del record["epoch"]
    await redis.set(keys.session_epoch(KEY), current)
    await redis.set(keys.console_session("sid"), json.dumps(record))
    await redis.sadd(keys.app_sessions_of("sid"), "app")
    await redis.set(keys.app_session("app"), "{}")
    assert await live_record(redis, "sid", clock, LIMITS) is None
    assert not await redis.exists(keys.console_session("sid"), keys.app_session("app"))


async def test_anonymous_sessions_need_no_epoch(redis: aioredis.Redis, clock: ManualClock) -> None:
    now = clock.now()
    await redis.set(
        keys.console_session("anon"), json.dumps({"created_at": now, "last_seen": now, "csrf": "c"})
    )
    assert await live_record(redis, "anon", clock, LIMITS) == {
        "created_at": now,
        "last_seen": now,
        "csrf": "c",
    }


@pytest.mark.parametrize("principal", ["staff:sam smith", "staff:" + "s" * 160, "staff:sam\n"])
async def test_a_record_naming_no_principal_key_has_no_epoch_to_match(
    redis: aioredis.Redis, clock: ManualClock, principal: str
) -> None:
    # Epoch 0 is what an absent counter reads as: a name that is no principal key must not
    # read as that absent counter (it names no counter at all) and pass as current.
    await redis.set(keys.console_session("sid"), json.dumps(login_record(clock, 0, principal)))
    assert await live_record(redis, "sid", clock, LIMITS) is None
    assert not await redis.exists(keys.console_session("sid"))


async def test_create_login_record_refuses_records_without_principal_or_epoch(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    for record in (
        login_record(clock, None),
        login_record(clock, True),
        login_record(clock, "0"),
        {**login_record(clock, 0), "principal": None},
    ):
        assert not await create_login_record(redis, "sid", record, TTL)
    assert not await redis.exists(keys.console_session("sid"))


async def test_concurrent_logins_under_one_epoch_all_save(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    # Only an end of all sessions moves the epoch; parallel logins do not refuse each other.
    results = await asyncio.gather(
        *(create_login_record(redis, f"p{i}", login_record(clock, 1), TTL) for i in range(20))
    )
    assert all(results)
    assert await redis.scard(keys.principal_sessions(KEY)) == 20
    assert await accounts.store.end_sessions(KEY) == 20
    assert await redis.keys(keys.console_session("p*")) == []


async def test_app_session_dies_with_an_epoch_change(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    assert await create_login_record(redis, "s1", login_record(clock, 1), TTL)
    sessions = AppSessions(redis, clock, LIMITS)
    token = "T" * 43
    assert await sessions.create(token, "s1", KEY, "acme.example")
    assert await sessions.lookup(token, "acme.example") is not None
    # Another path bumps the counter without deleting anything: refused all the same.
    await redis.incr(keys.session_epoch(KEY))
    assert await sessions.lookup(token, "acme.example") is None
    assert not await redis.exists(keys.console_session("s1"), keys.app_session(sid_of(token)))
