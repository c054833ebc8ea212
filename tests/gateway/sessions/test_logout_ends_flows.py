"""Ending a login ends its open streams and websockets at once, not when the grant ends.

A real gateway over HTTPS (console + routed host), a real upstream with an SSE stream and a
websocket, a real login with TOTP and hand-off, a real grant (`live`); then a real logout at the
console (or the account disabled) and what the client, the upstream and the audit see.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.app import IN_FLIGHT
from gateway.clock import ManualClock
from gateway.config import Sessions
from gateway.flow import REMEMBERED_ENDED_SESSIONS, SESSION_ENDED, InFlightFlows
from gateway.sessions.ends import SessionEnds, ended_session_id
from gateway.sessions.records import found_alive
from tests.gateway.sessions.harness import ACME, Site
from tests.gateway.sessions.live import (
    Running,
    aborted_as_session_ended,
    cut_by_the_periodic_recheck,
    cut_short,
    first_event,
    goes_on,
    heard,
    held_after_session,
    logged_in,
    not_aborted,
    rewrite,
    sse,
    streaming,
    two_logins,
)


async def test_logout_ends_the_logins_stream_and_websocket(running: Running) -> None:
    site = running.site
    async with site.browser() as browser:
        await logged_in(site, browser)
        async with (
            browser.session.get(site.routed(ACME, "/sse")) as stream,
            browser.session.ws_connect(f"wss://{ACME}:{site.port}/ws") as ws,
        ):
            assert stream.status == 200
            await first_event(stream)
            await ws.send_str("hello")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == "echo:hello"
            in_flight = site.app[IN_FLIGHT]
            [session_id] = in_flight.session_ids()
            assert len(in_flight.of_session(session_id)) == 2

            loop = asyncio.get_running_loop()
            out = await browser.form(site.console("/logout"), {})
            assert out.status == 200, out.text
            logged_out_at = loop.time()

            closing = await asyncio.wait_for(ws.receive(), 5)
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert closing.data == 1008
            rest = await cut_short(stream)
            assert b"id: 2" not in rest
            # Nothing else (upstream timeouts are 30 s) could have ended them this soon.
            assert loop.time() - logged_out_at < 3.0
    for path in ("/sse", "/ws"):
        await aborted_as_session_ended(site.redis, path)
    assert running.upstream.ws_closes == [1008]
    assert len(site.app[IN_FLIGHT]) == 0


async def test_disabling_the_account_ends_its_open_stream(running: Running) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        assert await site.accounts.store.set_disabled("staff:sam", True) == 1
        assert b"id: 2" not in await cut_short(live.stream)
    await aborted_as_session_ended(site.redis, "/sse")


async def test_another_login_of_the_same_person_keeps_its_stream(running: Running) -> None:
    site = running.site
    async with two_logins(site) as (kept, ended), sse(site, kept) as stream:
        out = await ended.form(site.console("/logout"), {})
        assert out.status == 200
        # The other browser's logout was heard (its session is remembered as ended) ...
        in_flight = site.app[IN_FLIGHT]
        await heard(in_flight._ended_sessions)
        # ... and this login's stream goes on to its end.
        await goes_on(running, stream)
    await not_aborted(site.redis, "/sse")


async def test_a_logout_between_session_check_and_forward_forwards_nothing(
    running: Running,
) -> None:
    site = running.site
    held = held_after_session(site)
    async with site.browser() as browser:
        await logged_in(site, browser)
        request = asyncio.ensure_future(
            browser.get(site.routed(ACME, "/echo"), headers={"Accept": "application/json"})
        )
        await asyncio.wait_for(held.entered.wait(), 5)
        # The session stage found the login alive; it ends before the grant stage runs.
        out = await browser.form(site.console("/logout"), {})
        assert out.status == 200
        in_flight = site.app[IN_FLIGHT]
        await heard(in_flight._ended_sessions)
        held.release.set()
        page = await asyncio.wait_for(request, 15)
    assert page.status == 403
    assert json.loads(page.text)["error"] == SESSION_ENDED
    assert running.upstream.received == []


async def test_an_end_missed_by_the_listener_is_found_by_the_recheck(running: Running) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        assert await live.ends.recheck() == 0  # alive: nothing ended
        # The session's record goes without any event (as if published while this
        # process was not subscribed).
        await site.redis.delete(keys.console_session(live.session_id))
        assert await live.ends.recheck() == 2  # the login and its app session, each judged dead
        assert b"id: 2" not in await cut_short(live.stream)
    await aborted_as_session_ended(site.redis, "/sse")


async def test_a_login_past_its_lifetime_loses_its_stream_within_the_recheck(
    running: Running,
) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        # The login was made one absolute lifetime ago by the Clock (the grant, shorter,
        # stays valid); its record stays in Redis and no end is published: only the
        # Clock says the login is over.
        created = site.clock.now() - site.config.sessions.absolute_lifetime_s
        await rewrite(site.redis, keys.console_session(live.session_id), created_at=created)
        await cut_by_the_periodic_recheck(live.stream)
    # The app's own periodic re-check cut it (the upstream itself gives up after 10 s,
    # which would not read as an abort).
    await aborted_as_session_ended(site.redis, "/sse")
    # Found dead, the login is ended in Redis too, as a lookup would have.
    assert await site.redis.exists(keys.console_session(live.session_id)) == 0


async def died_by(site: Site, session_id: str, how: str) -> None:
    """Let the login `session_id` die without any published end."""
    key = keys.console_session(session_id)
    if how == "idle":
        site.clock.advance(site.config.sessions.idle_timeout_s)  # the grant lasts longer
    elif how == "damaged":
        assert await site.redis.set(key, b"{not json", xx=True, keepttl=True)
    elif how == "no timestamps":
        await rewrite(site.redis, key, last_seen=None)
    else:  # every session of the account ended, its end not heard
        await site.redis.incr(keys.session_epoch("staff:sam"))


@pytest.mark.parametrize("how", ["idle", "damaged", "no timestamps", "epoch"])
async def test_the_recheck_ends_a_stream_of_a_login_the_lookup_would_refuse(
    running: Running, how: str
) -> None:
    site = running.site
    async with site.browser() as browser:
        async with streaming(site, browser) as live:
            await died_by(site, live.session_id, how)
            assert await live.ends.recheck() == 2  # the login and its app session, each dead
            assert b"id: 2" not in await cut_short(live.stream)
            assert await site.redis.exists(keys.console_session(live.session_id)) == 0
            assert await live.ends.recheck() == 0  # nothing left in flight
        # The routed host asks for a login again, as the lookup finds nothing.
        again = await browser.get(site.routed(ACME, "/"))
        assert again.status == 303
    await aborted_as_session_ended(site.redis, "/sse")


async def test_the_recheck_neither_ends_nor_refreshes_a_live_login(running: Running) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        key = keys.console_session(live.session_id)
        # Idle a while (less than the idle timeout): a lookup now would touch last_seen.
        site.clock.advance(site.config.sessions.idle_timeout_s - 5)
        before = await site.redis.get(key)
        assert list(await asyncio.gather(live.ends.recheck(), live.ends.recheck())) == [0, 0]
        # SECURITY: a re-check is no activity: it never postpones the idle timeout.
        assert await site.redis.get(key) == before
        assert len(live.in_flight.of_session(live.session_id)) == 1
        await goes_on(running, live.stream)


NOW = 1_800_000_000.0
LIVE = json.dumps({"created_at": NOW - 10, "last_seen": NOW - 10}).encode()


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [],
        [LIVE],
        [LIVE, None, None],
        "not a reply",
        [None, None],
        [b"{not json", None],
        [b"[1, 2]", None],
        [json.dumps({"created_at": "x", "last_seen": NOW}).encode(), None],
        [json.dumps({"created_at": NOW - 43200, "last_seen": NOW}).encode(), None],
        [json.dumps({"created_at": NOW, "last_seen": NOW - 1800}).encode(), None],
        [
            json.dumps({"created_at": NOW, "last_seen": NOW, "principal": "staff:sam"}).encode(),
            b"0",
        ],
    ],
)
def test_a_hostile_or_expired_reply_is_a_dead_login(reply: object) -> None:
    assert not found_alive(reply, NOW, Sessions())


def test_a_live_reply_is_a_live_login() -> None:
    assert found_alive([LIVE, None], NOW, Sessions())
    logged_in_record = {"created_at": NOW, "last_seen": NOW, "principal": "staff:sam", "epoch": 3}
    assert found_alive([json.dumps(logged_in_record).encode(), b"3"], NOW, Sessions())
    assert not found_alive([json.dumps(logged_in_record).encode(), b"4"], NOW, Sessions())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"end",
        b"end ",
        b"END abc",
        b"start abc",
        b"end abc def",
        b"end ../x",
        b"end " + b"a" * 129,
        b"end \xff\xfe",
        "end abc\u0663".encode(),
        b"\x00end abc",
    ],
)
def test_hostile_session_events_name_no_session(data: bytes) -> None:
    assert ended_session_id(data) is None


def test_a_session_event_names_its_session() -> None:
    assert ended_session_id(b"end " + b"a" * 64) == "a" * 64
    assert ended_session_id("end abc-_9") == "abc-_9"


def test_an_unreadable_event_ends_nothing(redis: aioredis.Redis) -> None:
    in_flight = InFlightFlows()
    SessionEnds(redis, in_flight, ManualClock(), Sessions()).on_event(b"end ../../x")
    assert not in_flight._ended_sessions
    SessionEnds(redis, in_flight, ManualClock(), Sessions()).on_event(b"end abc")
    assert list(in_flight._ended_sessions) == ["abc"]


def test_remembered_ended_sessions_are_bounded() -> None:
    in_flight = InFlightFlows()
    for index in range(REMEMBERED_ENDED_SESSIONS + 10):
        assert in_flight.abort_session(f"s-{index}") == 0
    assert len(in_flight._ended_sessions) == REMEMBERED_ENDED_SESSIONS
    assert "s-0" not in in_flight._ended_sessions
    assert f"s-{REMEMBERED_ENDED_SESSIONS + 9}" in in_flight._ended_sessions
