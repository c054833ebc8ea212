"""The re-check judges each in-flight app session by the rule every routed request applies.

The same real gateway as `test_logout_ends_flows` (`live`: HTTPS console + routed host, a real
upstream with an SSE stream, a real login, hand-off and grant). Each case changes what
the app session's lookup would read (its record, its console login, the account, the
login's TOTP time) without deleting the app session's record and without any published
end: only the re-check can find it, and it must cut the open stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from gateway import keys
from gateway.app import IN_FLIGHT
from gateway.clock import ManualClock
from gateway.config import Sessions
from gateway.sessions.app_sessions import AppSessions, judge_app_session
from gateway.sessions.ends import SessionEnds
from gateway.sessions.records import mfa_fresh
from tests.gateway.sessions.harness import ACME, Site
from tests.gateway.sessions.live import (
    Running,
    aborted_as_session_ended,
    cut_by_the_periodic_recheck,
    cut_short,
    goes_on,
    rewrite,
    sse,
    streaming,
    two_logins,
)


async def judged_otherwise(site: Site, app_session_id: str, session_id: str, how: str) -> None:
    """Make the lookup of `app_session_id` refuse, leaving its record stored, no event."""
    redis, app_key = site.redis, keys.app_session(app_session_id)
    console_key = keys.console_session(session_id)
    if how == "account disabled":  # the flag alone: no epoch raised, nothing deleted
        assert await redis.hset(keys.staff("sam"), "disabled", "1") == 0
    elif how == "account gone":
        assert await redis.delete(keys.staff("sam")) == 1
    elif how == "login of someone else":  # whose epoch matches the record's
        stored = await redis.get(console_key)
        assert stored is not None
        await redis.set(keys.session_epoch("member:acme:bob"), json.loads(stored)["epoch"])
        await rewrite(redis, console_key, principal="member:acme:bob")
    elif how == "app session of someone else":
        await rewrite(redis, app_key, principal="member:acme:bob")
    elif how == "login without TOTP time":
        await rewrite(redis, console_key, mfa_at=None)
    elif how == "TOTP too long ago":
        too_old = site.clock.now() - site.config.sessions.mfa_max_age_s - 1
        await rewrite(redis, console_key, mfa_at=too_old)
    elif how == "bound to another host":
        await rewrite(redis, app_key, host="beta.localhost")
    elif how == "names another login":
        await rewrite(redis, app_key, sid="f" * 64)
    elif how == "damaged app record":
        assert await redis.set(app_key, b"{not json", xx=True, keepttl=True)
    elif how == "app record of another type":
        assert await redis.delete(app_key) == 1
        assert await redis.hset(app_key, "sid", session_id) == 1
    elif how == "login gone":
        assert await redis.delete(console_key) == 1
    elif how == "login past its lifetime":
        created = site.clock.now() - site.config.sessions.absolute_lifetime_s
        await rewrite(redis, console_key, created_at=created)
    else:  # every session of the account ended, its end not heard
        assert how == "epoch raised"
        await redis.incr(keys.session_epoch("staff:sam"))


CASES = [
    "account disabled",
    "account gone",
    "login of someone else",
    "app session of someone else",
    "login without TOTP time",
    "TOTP too long ago",
    "bound to another host",
    "names another login",
    "damaged app record",
    "app record of another type",
    "login gone",
    "login past its lifetime",
    "epoch raised",
]


@pytest.mark.parametrize("how", CASES)
async def test_the_recheck_ends_a_stream_the_lookup_would_refuse(
    running: Running, how: str
) -> None:
    site = running.site
    async with site.browser() as browser:
        async with streaming(site, browser) as live:
            assert await live.ends.recheck() == 0  # alive: nothing ended
            await judged_otherwise(site, live.app_session_id, live.session_id, how)
            assert await live.ends.recheck() >= 1
            assert b"id: 2" not in await cut_short(live.stream)
        # The routed host refuses this cookie too: the re-check judged as the lookup does
        # (which fails closed, 500, on a key Redis cannot read as a string).
        again = await browser.get(site.routed(ACME, "/"))
        assert again.status == (500 if how == "app record of another type" else 303), again.text
    await aborted_as_session_ended(site.redis, "/sse")


async def test_a_stale_totp_time_cuts_the_stream_but_keeps_the_app_session(
    running: Running,
) -> None:
    site = running.site
    async with site.browser() as browser:
        async with streaming(site, browser) as live:
            app_session_id, session_id = live.app_session_id, live.session_id
            await judged_otherwise(site, app_session_id, session_id, "TOTP too long ago")
            assert await live.ends.recheck() == 1
            assert b"id: 2" not in await cut_short(live.stream)
        in_flight = live.in_flight
        # Nothing ended for good: the login and the app session stay (a step-up renews the
        # TOTP time), and this app session is not remembered as ended.
        assert await site.redis.exists(keys.console_session(session_id)) == 1
        assert await site.redis.exists(keys.app_session(app_session_id)) == 1
        assert app_session_id not in in_flight._ended_app_sessions
        assert session_id not in in_flight._ended_sessions
        # The next request is sent to step up, by the MFA stage's own rule.
        again = await browser.get(site.routed(ACME, "/"))
        assert again.status == 303, again.text
        assert "step-up" in again.location
        # After a fresh TOTP time the same app session proxies again.
        await rewrite(site.redis, keys.console_session(session_id), mfa_at=site.clock.now())
        page = await browser.get(site.routed(ACME, "/echo"))
        assert page.status == 200, page.text


async def test_the_apps_own_recheck_cuts_a_disabled_accounts_stream(running: Running) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        await judged_otherwise(site, live.app_session_id, live.session_id, "account disabled")
        await cut_by_the_periodic_recheck(live.stream)
    await aborted_as_session_ended(site.redis, "/sse")


def failures(kind: str) -> float:
    value = REGISTRY.get_sample_value("gateway_session_recheck_failures_total", {"failure": kind})
    return value or 0.0


async def test_an_unreadable_app_session_ends_only_its_own_stream(running: Running) -> None:
    site = running.site
    async with two_logins(site) as (kept, broken):
        async with sse(site, kept) as kept_stream:
            in_flight = site.app[IN_FLIGHT]
            [kept_app] = in_flight.app_session_ids()
            async with sse(site, broken) as broken_stream:
                [broken_app] = in_flight.app_session_ids() - {kept_app}
                # A key of the wrong type: Redis answers its read with an error (the lookup
                # raises, and the request is refused). The others are still judged.
                await site.redis.delete(keys.app_session(broken_app))
                await site.redis.hset(keys.app_session(broken_app), "sid", "x")
                ends = SessionEnds(site.redis, in_flight, site.clock, site.config.sessions)
                before = failures("reply")
                assert await ends.recheck() == 1
                assert failures("reply") == before + 1
                assert b"id: 2" not in await cut_short(broken_stream)
            assert len(in_flight.of_app_session(kept_app)) == 1
            await goes_on(running, kept_stream)
        # Unreadable is not ended for good: nothing about it is remembered.
        assert broken_app not in in_flight._ended_app_sessions
        assert not in_flight._ended_sessions


async def test_a_recheck_without_redis_says_so_and_ends_nothing(
    running: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = running.site
    dead = aioredis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"))
    try:
        async with site.browser() as browser, streaming(site, browser) as live:
            in_flight = live.in_flight
            ends = SessionEnds(dead, in_flight, site.clock, site.config.sessions)
            before = failures("round_trip")
            with (
                caplog.at_level(logging.WARNING, "gateway.sessions.ends"),
                pytest.raises(aioredis.ConnectionError),
            ):
                await ends.recheck()  # raised: the listener reconnects and re-checks
            assert failures("round_trip") == before + 1
            assert any("re-check" in record.getMessage() for record in caplog.records)
            # Nothing ended and nothing remembered: an unreachable Redis is no verdict.
            assert len(in_flight.of_app_session(live.app_session_id)) == 1
            assert not in_flight._ended_app_sessions
            assert not in_flight._ended_sessions
            # Each request is still judged by its own lookup (it reads Redis itself).
            page = await browser.get(site.routed(ACME, "/echo"))
            assert page.status == 200, page.text
            await site.redis.hset(keys.staff("sam"), "disabled", "1")
            refused = await browser.get(site.routed(ACME, "/echo"))
            assert refused.status == 303, refused.text
            await goes_on(running, live.stream)
    finally:
        await dead.aclose()


class RoundTrips:
    """A unix-socket relay in front of Redis counting round trips: each time a client
    sends after Redis last answered it."""

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.count = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._relay, str(self.path))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        answered = [True]

        async def to_redis() -> None:
            while data := await reader.read(65536):
                if answered[0]:
                    self.count += 1
                    answered[0] = False
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                answered[0] = True
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(to_redis(), to_client(), return_exceptions=True)


async def test_a_recheck_is_one_round_trip(
    running: Running, redis_url: str, tmp_path: Path
) -> None:
    site = running.site
    relay = RoundTrips(redis_url.removeprefix("unix://"), tmp_path / "relay.sock")
    await relay.start()
    counted = aioredis.Redis(unix_socket_path=str(relay.path))
    try:
        async with site.browser() as browser, streaming(site, browser) as live:
            ends = SessionEnds(counted, live.in_flight, site.clock, site.config.sessions)
            assert await ends.recheck() == 0  # connects and loads the scripts
            relay.count = 0
            for _ in range(5):
                assert await ends.recheck() == 0
            # SECURITY-relevant cost: one console login and one app session, judged
            # in full, in one round trip each time (no SCRIPT EXISTS before it).
            assert relay.count == 5
            # Scripts flushed (a Redis restart): reloaded, then judged again.
            await site.redis.script_flush()
            relay.count = 0
            assert await ends.recheck() == 0
            assert relay.count == 4  # NOSCRIPT, two loads, the read again
            await goes_on(running, live.stream)
    finally:
        await counted.aclose()
        await relay.close()


# --- the one judgement, on hostile replies (no Redis) -------------------------------------

NOW = 1_800_000_000.0
LIMITS = Sessions(idle_timeout_s=600, absolute_lifetime_s=3600, mfa_max_age_s=300)
HOST = "acme.example"
APP = json.dumps({"sid": "s1", "principal": "staff:sam", "host": HOST}).encode()
CONSOLE = json.dumps(
    {
        "principal": "staff:sam",
        "created_at": NOW - 100,
        "last_seen": NOW - 10,
        "mfa_at": NOW - 100,
        "epoch": 2,
    }
).encode()
ACCOUNT = [
    b"kind",
    b"staff",
    b"id",
    b"sam",
    b"email",
    b"sam@vendor.example",
    b"name",
    b"Sam",
]


def live_reply() -> list[Any]:
    return [APP, CONSOLE, b"2", list(ACCOUNT)]


def test_a_live_reply_is_a_live_app_login() -> None:
    verdict = judge_app_session(live_reply(), "a1", HOST, NOW, LIMITS)
    assert verdict.login is not None
    assert (verdict.login.principal_key, verdict.login.session_id) == ("staff:sam", "s1")
    assert verdict.login.app_session_id == "a1"
    assert verdict.dead_console is None
    # Host names compare case-folded, as the request's host is.
    assert judge_app_session(live_reply(), "a1", HOST.upper(), NOW, LIMITS).login is not None


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [],
        "not a reply",
        b"bytes",
        7,
        ValueError("an error reply"),
        [APP],
        [APP, CONSOLE],
        [APP, CONSOLE, b"2"],
        [APP, CONSOLE, b"2", list(ACCOUNT), b"extra"],
        [b"{not json", CONSOLE, b"2", list(ACCOUNT)],
        [7, CONSOLE, b"2", list(ACCOUNT)],
        [APP, CONSOLE, b"2", b"not a hash"],
        [APP, CONSOLE, b"2", []],
        [APP, CONSOLE, b"2", [b"kind"]],
        [APP, CONSOLE, b"2", [*ACCOUNT, b"disabled", b"1"]],
        [APP, CONSOLE, b"2", [b"kind", b"staff", b"id", b"kim", *ACCOUNT[4:]]],
        [json.dumps({"sid": "s1", "principal": "staff:sam"}).encode(), CONSOLE, b"2", ACCOUNT],
        [json.dumps({"sid": "s1", "host": HOST}).encode(), CONSOLE, b"2", ACCOUNT],
        [
            json.dumps({"sid": "s1", "principal": "staff:sam", "host": "beta.example"}).encode(),
            CONSOLE,
            b"2",
            ACCOUNT,
        ],
        [
            APP,
            json.dumps({**json.loads(CONSOLE), "principal": "staff:kim"}).encode(),
            b"2",
            ACCOUNT,
        ],
        [APP, json.dumps({**json.loads(CONSOLE), "mfa_at": True}).encode(), b"2", ACCOUNT],
        [APP, json.dumps({**json.loads(CONSOLE), "mfa_at": "1"}).encode(), b"2", ACCOUNT],
    ],
)
def test_a_hostile_or_refused_reply_is_no_app_login(reply: object) -> None:
    verdict = judge_app_session(reply, "a1", HOST, NOW, LIMITS)
    assert verdict.login is None
    assert verdict.dead_console is None  # nothing here says a stored login is dead


@pytest.mark.parametrize(
    "console",
    [
        b"{not json",
        json.dumps({**json.loads(CONSOLE), "created_at": NOW - 3600}).encode(),
        json.dumps({**json.loads(CONSOLE), "last_seen": NOW - 600}).encode(),
        json.dumps({**json.loads(CONSOLE), "epoch": 1}).encode(),
        json.dumps({k: v for k, v in json.loads(CONSOLE).items() if k != "epoch"}).encode(),
    ],
)
def test_a_dead_console_login_is_named_to_be_ended(console: bytes) -> None:
    verdict = judge_app_session([APP, console, b"2", ACCOUNT], "a1", HOST, NOW, LIMITS)
    assert verdict.login is None
    assert verdict.dead_console == "s1"


def test_an_unreadable_console_value_is_a_dead_login() -> None:
    verdict = judge_app_session([APP, 7, b"2", ACCOUNT], "a1", HOST, NOW, LIMITS)
    assert (verdict.login, verdict.dead_console, verdict.dead_principal) == (None, "s1", "-")


def test_a_damaged_epoch_is_a_dead_login() -> None:
    for epoch in (b"", b"x", b"-1", b"9" * 21):
        verdict = judge_app_session([APP, CONSOLE, epoch, ACCOUNT], "a1", HOST, NOW, LIMITS)
        assert verdict.login is None
        assert verdict.dead_console == "s1"


def test_mfa_freshness_is_one_rule() -> None:
    assert mfa_fresh(NOW - 300, NOW, LIMITS)
    assert not mfa_fresh(NOW - 300.001, NOW, LIMITS)
    assert mfa_fresh(NOW + 5, NOW, LIMITS)  # a clock step back is no staleness


async def test_the_lookup_and_the_recheck_share_the_read(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    sessions = AppSessions(redis, clock, LIMITS)
    lookup = sessions.read_of("a1")
    assert lookup.keys == (keys.app_session("a1"),)
    assert lookup.sha == sessions.read_of("b2").sha  # one script for every app session
