"""The session check's one round trip: app session, console session, epoch and account
read by one Lua script; every check judged on what it read, damaged records refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts.model import Account
from gateway.clock import ManualClock
from gateway.config import Sessions
from gateway.identity import Principal, PrincipalKind
from gateway.sessions.app_sessions import AppSessions
from gateway.sessions.records import sid_of

LIMITS = Sessions(idle_timeout_s=600, absolute_lifetime_s=3600, mfa_max_age_s=300)
HOST = "acme.example"
TOKEN = "T" * 43
BOB = Principal(PrincipalKind.MEMBER, "bob.b", "bob@acme.example", "Bob", "acme-1", "admin")
SAM = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")


async def put_account(redis: aioredis.Redis, principal: Principal, **changes: str) -> None:
    fields = {**Account(principal, "", "", False).to_redis(), **changes}
    key = (
        keys.staff(principal.id)
        if principal.org is None
        else keys.member(principal.org, principal.id)
    )
    await redis.hset(key, mapping=fields)  # type: ignore[arg-type]


async def logged_in(
    redis: aioredis.Redis, clock: ManualClock, who: Principal, **record: object
) -> AppSessions:
    """A console session "sid" of `who` (epoch 0) with the app session TOKEN on HOST."""
    now = clock.now()
    console = {
        "principal": who.key,
        "created_at": now,
        "last_seen": now,
        "mfa_at": now - 10,
        "epoch": 0,
        **record,
    }
    await redis.set(keys.console_session("sid"), json.dumps(console))
    sessions = AppSessions(redis, clock, LIMITS)
    assert await sessions.create(TOKEN, "sid", who.key, HOST)
    return sessions


async def test_member_login_found_with_its_account(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    await put_account(redis, BOB)
    sessions = await logged_in(redis, clock, BOB)
    found = await sessions.lookup(TOKEN, HOST)
    assert found is not None
    assert found.principal == BOB
    assert found.principal_key == "member:acme-1:bob.b"
    assert found.session_id == "sid"
    assert found.mfa_at == clock.now() - 10
    assert found.app_session_id == sid_of(TOKEN)


async def test_lookup_is_one_round_trip(redis: aioredis.Redis, clock: ManualClock) -> None:
    await put_account(redis, SAM)
    sessions = await logged_in(redis, clock, SAM)
    assert await sessions.lookup(TOKEN, HOST) is not None  # loads the script once
    await redis.config_resetstat()
    for _ in range(5):
        clock.advance(1)  # within the touch interval: nothing to write back
        assert await sessions.lookup(TOKEN, HOST) is not None
    stats: dict[str, Any] = await redis.info("commandstats")
    calls = {name: value["calls"] for name, value in stats.items()}
    # Redis counts a script's own reads too: per lookup one EVALSHA and, inside it, three
    # GETs (app session, console session, epoch) and one HGETALL (account). A read or
    # write sent by the lookup itself would show up here as well. (Only these names are
    # compared: the server is shared with the rest of the test session.)
    lookup_commands = ("evalsha", "eval", "get", "hgetall", "set", "mget", "multi")
    assert {name: calls.get(f"cmdstat_{name}", 0) for name in lookup_commands} == {
        "evalsha": 5,
        "eval": 0,
        "get": 15,
        "hgetall": 5,
        "set": 0,
        "mget": 0,
        "multi": 0,
    }


async def test_last_seen_touched_only_when_due(redis: aioredis.Redis, clock: ManualClock) -> None:
    await put_account(redis, SAM)
    sessions = await logged_in(redis, clock, SAM)
    clock.advance(20)
    assert await sessions.lookup(TOKEN, HOST) is not None
    stored = json.loads(await redis.get(keys.console_session("sid")) or b"null")
    assert stored["last_seen"] == clock.now()
    clock.advance(590)  # idle 590 s since that touch: still alive
    assert await sessions.lookup(TOKEN, HOST) is not None


async def test_idle_and_absolute_limits_by_the_clock(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    await put_account(redis, SAM)
    sessions = await logged_in(redis, clock, SAM)
    for _ in range(7):
        clock.advance(500)
        assert await sessions.lookup(TOKEN, HOST) is not None
    clock.advance(100)  # 3600 s old: the absolute lifetime ends it, app session with it
    assert await sessions.lookup(TOKEN, HOST) is None
    assert not await redis.exists(keys.console_session("sid"), keys.app_session(sid_of(TOKEN)))


async def test_disabled_missing_or_mismatched_account_refused(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    sessions = await logged_in(redis, clock, SAM)
    assert await sessions.lookup(TOKEN, HOST) is None  # no account at all
    await put_account(redis, SAM, disabled="1")
    assert await sessions.lookup(TOKEN, HOST) is None  # disabled, epoch unchanged
    await put_account(redis, SAM, disabled="0", id="kim")
    assert await sessions.lookup(TOKEN, HOST) is None  # the hash names someone else
    await put_account(redis, SAM, id="sam", kind="robot")
    assert await sessions.lookup(TOKEN, HOST) is None  # damaged: no such kind
    await redis.hdel(keys.staff("sam"), "kind")
    assert await sessions.lookup(TOKEN, HOST) is None  # damaged: no kind at all
    await put_account(redis, SAM)
    assert await sessions.lookup(TOKEN, HOST) is not None  # and whole again


async def test_console_session_of_someone_else_or_without_mfa_refused(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    await put_account(redis, SAM)
    sessions = await logged_in(redis, clock, SAM, mfa_at=True)
    assert await sessions.lookup(TOKEN, HOST) is None
    sessions = await logged_in(redis, clock, SAM, principal=BOB.key)
    assert await sessions.lookup(TOKEN, HOST) is None


@pytest.mark.parametrize(
    "app_record",
    [
        b"\xff not json",
        b"[1, 2]",
        b'"a string"',
        {"host": HOST, "principal": "staff:sam"},  # no sid
        {"host": HOST, "sid": "sid"},  # no principal
        {"host": HOST, "sid": 7, "principal": "staff:sam"},
        {"host": HOST, "sid": "../sid", "principal": "staff:sam"},
        {"host": HOST, "sid": "s:id", "principal": "staff:sam"},
        {"host": HOST, "sid": "s" * 129, "principal": "staff:sam"},
        {"host": HOST, "sid": "sid", "principal": "staff:sam:extra"},
        {"host": HOST, "sid": "sid", "principal": "member:acme-1"},
        {"host": HOST, "sid": "sid", "principal": "staff:sa m"},
        {"host": HOST, "sid": "sid", "principal": "staff:%a"},
        {"host": HOST, "sid": "sid", "principal": "staff:" + "a" * 65},
        {"host": HOST, "sid": "sid", "principal": "org:acme-1"},
        {"host": HOST, "sid": "sid", "principal": ["staff:sam"]},
        {"host": HOST, "sid": "sid", "principal": None},
        {"host": "beta.example", "sid": "sid", "principal": "staff:sam"},
    ],
)
async def test_damaged_or_hostile_app_records_are_no_login(
    redis: aioredis.Redis, clock: ManualClock, app_record: bytes | dict[str, object]
) -> None:
    await put_account(redis, SAM)
    sessions = await logged_in(redis, clock, SAM)
    raw = app_record if isinstance(app_record, bytes) else json.dumps(app_record)
    await redis.set(keys.app_session(sid_of(TOKEN)), raw)
    assert await sessions.lookup(TOKEN, HOST) is None
    # Nothing else was touched: the console session is still there for its other uses.
    assert await redis.exists(keys.console_session("sid"))


async def test_cookie_shapes_refused_before_redis(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    sessions = AppSessions(redis, clock, LIMITS)
    await redis.config_resetstat()
    for token in (None, "", "short", "T" * 44, "T" * 42 + "!", "\u00e9" * 43):
        assert await sessions.lookup(token, HOST) is None
    stats: dict[str, Any] = await redis.info("commandstats")
    assert not {"cmdstat_evalsha", "cmdstat_eval", "cmdstat_get"} & set(stats)


async def test_redis_down_raises_so_the_stage_fails_closed(clock: ManualClock) -> None:
    # No server on this port: the lookup raises and the pipeline runner denies the flow.
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        with pytest.raises(aioredis.ConnectionError):
            await AppSessions(dead, clock, LIMITS).lookup(TOKEN, HOST)
    finally:
        await dead.aclose()
