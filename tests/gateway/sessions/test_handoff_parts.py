"""Return addresses, hand-off codes, app sessions and session records, against real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts.model import Account
from gateway.clock import ManualClock
from gateway.config import Sessions
from gateway.identity import Principal, PrincipalKind
from gateway.sessions.app_sessions import AppSessions
from gateway.sessions.handoff import (
    HandoffCodes,
    ReturnAddresses,
    browser_binding,
    new_nonce,
    routed_url_parts,
    url_port,
)
from gateway.sessions.records import alive, live_record, sid_of

KEY = bytes(range(32))
NONCE = new_nonce()
BINDING = str(browser_binding(NONCE))
LIMITS = Sessions(idle_timeout_s=600, absolute_lifetime_s=3600, mfa_max_age_s=300)


def routed(host: str) -> bool:
    return host in ("acme.example", "beta.example")


def test_signed_return_round_trip_and_tampering(clock: ManualClock) -> None:
    addresses = ReturnAddresses(KEY, clock)
    token = addresses.sign("https://acme.example:8443/a/b?c=d", binding=BINDING)
    assert addresses.verify(token, routed) == "https://acme.example:8443/a/b?c=d"
    payload, mac = token.split(".")
    assert (
        addresses.verify(payload + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"), routed)
        is None
    )
    assert addresses.verify(payload[:-2] + "." + mac, routed) is None
    assert ReturnAddresses(bytes(32), clock).verify(token, routed) is None
    clock.advance(3600)
    assert addresses.verify(token, routed) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://acme.example/",
        "https://evil.example/",
        "https://acme.example//evil.example/",
        "https://user:pw@acme.example/",
        "https://acme.example/\\evil",
        "https://acme.example/#frag",
        "https://acme.example/a b",
        "https://acme.example:99999/",
        "javascript:alert(1)",
    ],
)
def test_signed_but_unfit_addresses_refused(clock: ManualClock, url: str) -> None:
    addresses = ReturnAddresses(KEY, clock)
    assert addresses.verify(addresses.sign(url, binding=BINDING), routed) is None


def test_url_parts() -> None:
    assert routed_url_parts("https://Acme.Example:8443/x?y=1") == (
        "acme.example",
        "acme.example:8443",
        "/x?y=1",
    )
    assert routed_url_parts("https://acme.example") == ("acme.example", "acme.example", "/")


async def test_code_once_in_time_on_its_host(redis: aioredis.Redis, clock: ManualClock) -> None:
    codes = HandoffCodes(redis, clock, ttl_s=30)
    code = await codes.issue("sid", "staff:sam", "acme.example", "/x", binding=BINDING, port=443)
    stored = await redis.keys(keys.handoff_code("*"))
    assert len(stored) == 1
    assert code.encode() not in stored[0]
    grant = await codes.redeem(code, "ACME.example", NONCE, port=443)
    assert grant is not None
    assert (grant.session_id, grant.principal_key, grant.target) == ("sid", "staff:sam", "/x")
    assert await codes.redeem(code, "acme.example", NONCE, port=443) is None
    late = await codes.issue("sid", "staff:sam", "acme.example", "/x", binding=BINDING, port=443)
    clock.advance(30)
    assert await codes.redeem(late, "acme.example", NONCE, port=443) is None


async def test_concurrent_redemptions_one_wins(
    redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        code = await HandoffCodes(redis, clock, 30).issue(
            "sid", "staff:sam", "acme.example", "/", binding=BINDING, port=443
        )
        results = await asyncio.gather(
            *(
                HandoffCodes(c, clock, 30).redeem(code, "acme.example", NONCE, port=443)
                for c in clients * 3
            )
        )
        assert sum(r is not None for r in results) == 1
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize(
    "record",
    [
        b"\xff not json",
        b"[1, 2]",
        {"principal": "staff:sam", "host": "acme.example", "target": "/"},
        {"sid": 5, "principal": "staff:sam", "host": "acme.example", "target": "/"},
        {"sid": "sid", "principal": None, "host": "acme.example", "target": "/"},
        {"sid": "sid", "principal": "staff:sam", "host": "acme.example"},
        {"sid": "sid", "principal": "staff:sam", "host": ["acme.example"], "target": "/"},
    ],
)
async def test_damaged_code_record_is_no_code_and_is_spent(
    redis: aioredis.Redis, clock: ManualClock, record: bytes | dict[str, object]
) -> None:
    codes = HandoffCodes(redis, clock, ttl_s=30)
    code = await codes.issue("sid", "staff:sam", "acme.example", "/x", binding=BINDING, port=443)
    (key,) = await redis.keys(keys.handoff_code("*"))
    if isinstance(record, dict):
        record = json.dumps({"binding": BINDING, **record, "expires_at": clock.now() + 30}).encode()
    await redis.set(key, record)
    assert await codes.redeem(code, "acme.example", NONCE, port=443) is None
    assert not await redis.exists(key)


def _console_record(clock: ManualClock, **extra: object) -> str:
    now = clock.now()
    return json.dumps(
        {
            "created_at": now,
            "last_seen": now,
            "principal": "staff:sam",
            "mfa_at": now,
            "epoch": 0,
            **extra,
        }
    )


async def _sam(redis: aioredis.Redis) -> None:
    """The staff account the records above name, as the account store writes it."""
    sam = Account(Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam"), "", "", False)
    await redis.hset(keys.staff("sam"), mapping=sam.to_redis())  # type: ignore[arg-type]


async def test_app_session_lives_and_dies_with_console_session(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    await _sam(redis)
    await redis.set(keys.console_session("sid"), _console_record(clock))
    sessions = AppSessions(redis, clock, LIMITS)
    token = "T" * 43
    assert await sessions.create(token, "sid", "staff:sam", "acme.example")
    found = await sessions.lookup(token, "acme.example")
    assert found is not None
    assert found.principal_key == "staff:sam"
    assert await sessions.lookup(token, "beta.example") is None
    assert await sessions.lookup("U" * 43, "acme.example") is None
    assert await sessions.lookup("short", "acme.example") is None
    clock.advance(601)  # the console session went idle: the app session is dead too
    assert await sessions.lookup(token, "acme.example") is None
    assert not await redis.exists(
        keys.console_session("sid"), keys.app_session(found.app_session_id)
    )


async def test_no_app_session_for_an_ended_console_session(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    sessions = AppSessions(redis, clock, LIMITS)
    assert not await sessions.create("T" * 43, "gone", "staff:sam", "acme.example")
    assert await redis.keys(keys.app_session("*")) == []


async def test_app_session_of_another_principal_refused(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    await redis.set(keys.console_session("sid"), _console_record(clock, principal="staff:kim"))
    sessions = AppSessions(redis, clock, LIMITS)
    assert await sessions.create("T" * 43, "sid", "staff:sam", "acme.example")
    assert await sessions.lookup("T" * 43, "acme.example") is None


async def test_app_session_without_a_principal_is_no_login(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    # A console session with no principal (a login form's session) and an app-session
    # record naming none must not add up to a login of "nobody".
    await redis.set(keys.console_session("sid"), _console_record(clock, principal=None))
    await redis.set(
        keys.app_session(sid_of("T" * 43)),
        json.dumps({"sid": "sid", "host": "acme.example"}),
    )
    sessions = AppSessions(redis, clock, LIMITS)
    assert await sessions.lookup("T" * 43, "acme.example") is None


@pytest.mark.parametrize(
    "record",
    [{}, {"created_at": "x", "last_seen": 1}, {"created_at": None, "last_seen": None}],
)
def test_records_without_times_are_dead(record: dict[str, object]) -> None:
    assert not alive(record, 1.0, LIMITS)


async def test_corrupt_record_is_ended(redis: aioredis.Redis, clock: ManualClock) -> None:
    await redis.set(keys.console_session("sid"), b"\xff not json")
    await redis.sadd(keys.app_sessions_of("sid"), "app")
    await redis.set(keys.app_session("app"), "{}")
    assert await live_record(redis, "sid", clock, LIMITS) is None
    assert not await redis.exists(keys.console_session("sid"), keys.app_session("app"))


async def test_touch_keeps_session_alive_but_not_past_lifetime(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    await redis.set(keys.console_session("sid"), _console_record(clock))
    for _ in range(7):
        clock.advance(500)
        assert await live_record(redis, "sid", clock, LIMITS) is not None
    clock.advance(100)  # seen 100 s ago, but 3600 s old: the absolute lifetime ends it
    assert await live_record(redis, "sid", clock, LIMITS) is None


@pytest.mark.parametrize(
    ("issued", "presented", "accepted"),
    [
        (443, 443, True),
        (8443, 8443, True),
        (443, 8443, False),
        (8443, 443, False),
        (8443, 9443, False),
        (80, 443, False),
    ],
)
async def test_code_only_on_its_own_port(
    redis: aioredis.Redis, clock: ManualClock, issued: int, presented: int, accepted: bool
) -> None:
    codes = HandoffCodes(redis, clock, ttl_s=30)
    code = await codes.issue("sid", "staff:sam", "acme.example", "/", binding=BINDING, port=issued)
    grant = await codes.redeem(code, "acme.example", NONCE, port=presented)
    assert (grant is not None) is accepted
    # Tried on the wrong port, the code is spent all the same (it may have leaked).
    assert await codes.redeem(code, "acme.example", NONCE, port=issued) is None


@pytest.mark.parametrize("port", [0, -1, 65536, True, "443", None])
async def test_code_for_no_real_port_refused(
    redis: aioredis.Redis, clock: ManualClock, port: object
) -> None:
    codes = HandoffCodes(redis, clock, ttl_s=30)
    with pytest.raises(ValueError, match="port"):
        await codes.issue("sid", "staff:sam", "acme.example", "/", binding=BINDING, port=port)  # type: ignore[arg-type]
    assert await redis.keys(keys.handoff_code("*")) == []


@pytest.mark.parametrize("stored", [None, "443", 443.0, True, 0, 70000])
async def test_code_record_without_a_sound_port_is_no_code(
    redis: aioredis.Redis, clock: ManualClock, stored: object
) -> None:
    codes = HandoffCodes(redis, clock, ttl_s=30)
    code = await codes.issue("sid", "staff:sam", "acme.example", "/", binding=BINDING, port=443)
    (key,) = await redis.keys(keys.handoff_code("*"))
    record = json.loads(await redis.get(key) or b"{}")
    if stored is None:
        del record["port"]
    else:
        record["port"] = stored
    await redis.set(key, json.dumps(record))
    assert await codes.redeem(code, "acme.example", NONCE, port=443) is None


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://acme.example/x", 443),
        ("https://acme.example:443/x", 443),
        ("https://acme.example:8443/x?y=1", 8443),
        ("http://acme.example/x", 80),
        ("http://acme.example:8080/", 8080),
    ],
)
def test_url_port_defaults_by_scheme(url: str, port: int) -> None:
    assert url_port(url) == port
