"""Logging out of one routed host ends that host's open streams and websockets at once.

The same real gateway as `test_logout_ends_flows` (`live`: HTTPS console + routed host, a real
upstream with an SSE stream and a websocket, a real login, hand-off and grant); then a
real `/.gateway/logout` on the routed host and what the client, the upstream and the
audit see. The console login itself lives on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.app import IN_FLIGHT
from gateway.clock import ManualClock
from gateway.config import Sessions
from gateway.cookies import APP_SESSION
from gateway.flow import REMEMBERED_ENDED_SESSIONS, SESSION_ENDED, InFlightFlows
from gateway.sessions.app_sessions import AppSessions
from gateway.sessions.ends import END_APP, SessionEnds, ended_session_id, session_event
from gateway.sessions.records import sid_of
from tests.gateway.sessions.harness import ACME, Browser, Site
from tests.gateway.sessions.live import (
    WAIT_S,
    Running,
    aborted_as_session_ended,
    cut_short,
    first_event,
    goes_on,
    heard,
    held_after_session,
    logged_in,
    not_aborted,
    sse,
    streaming,
    two_logins,
)


async def routed_logout(site: Site, browser: Browser) -> None:
    out = await browser.get(site.routed(ACME, "/.gateway/logout"))
    assert out.status == 303, out.text
    assert out.location.endswith("/logout")
    assert browser.cookie(APP_SESSION, ACME) is None


async def test_routed_logout_ends_that_hosts_stream_and_websocket(running: Running) -> None:
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
            assert (await asyncio.wait_for(ws.receive(), WAIT_S)).data == "echo:hello"
            in_flight = site.app[IN_FLIGHT]
            [app_session_id] = in_flight.app_session_ids()
            [session_id] = in_flight.session_ids()
            assert len(in_flight.of_app_session(app_session_id)) == 2

            loop = asyncio.get_running_loop()
            await routed_logout(site, browser)
            logged_out_at = loop.time()

            closing = await asyncio.wait_for(ws.receive(), WAIT_S)
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert closing.data == 1008
            assert b"id: 2" not in await cut_short(stream)
            # Heard at once, not at the next re-check (nor by upstream timeouts of 30 s).
            assert loop.time() - logged_out_at < 3.0
            # Only this host's app session ended: the console login lives on.
            assert await site.redis.exists(keys.console_session(session_id)) == 1
            assert await site.redis.exists(keys.app_session(app_session_id)) == 0
    for path in ("/sse", "/ws"):
        await aborted_as_session_ended(site.redis, path)
    assert running.upstream.ws_closes == [1008]
    assert len(site.app[IN_FLIGHT]) == 0
    assert not site.app[IN_FLIGHT].app_session_ids()


async def test_another_app_session_keeps_its_stream(running: Running) -> None:
    site = running.site
    async with two_logins(site) as (kept, ended), sse(site, kept) as stream:
        await routed_logout(site, ended)
        in_flight = site.app[IN_FLIGHT]
        await heard(in_flight._ended_app_sessions)
        assert not in_flight._ended_sessions  # no console login ended
        await goes_on(running, stream)
    await not_aborted(site.redis, "/sse")


async def test_a_routed_logout_between_session_check_and_forward_forwards_nothing(
    running: Running,
) -> None:
    site = running.site
    held = held_after_session(site)
    async with site.browser() as browser:
        await logged_in(site, browser)
        request = asyncio.ensure_future(
            browser.get(site.routed(ACME, "/echo"), headers={"Accept": "application/json"})
        )
        await asyncio.wait_for(held.entered.wait(), WAIT_S)
        # The session stage found the app session alive; it ends before the grant stage.
        await routed_logout(site, browser)
        in_flight = site.app[IN_FLIGHT]
        await heard(in_flight._ended_app_sessions)
        held.release.set()
        page = await asyncio.wait_for(request, WAIT_S)
    assert page.status == 403
    assert json.loads(page.text)["error"] == SESSION_ENDED
    assert running.upstream.received == []


async def test_an_app_session_end_missed_by_the_listener_is_found_by_the_recheck(
    running: Running,
) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        assert await live.ends.recheck() == 0  # alive: nothing ended
        # The app session's record goes without any event.
        await site.redis.delete(keys.app_session(live.app_session_id))
        assert await live.ends.recheck() == 1
        assert b"id: 2" not in await cut_short(live.stream)
    await aborted_as_session_ended(site.redis, "/sse")


async def test_an_app_sessions_stream_ends_when_its_login_outlives_its_idle_time(
    running: Running,
) -> None:
    site = running.site
    async with site.browser() as browser, streaming(site, browser) as live:
        # The app session lives while its console login does; that login goes idle by
        # the Clock (the grant lasts longer) with both records still stored.
        site.clock.advance(site.config.sessions.idle_timeout_s)
        assert await live.ends.recheck() == 2  # the login and its app session, each judged dead
        assert b"id: 2" not in await cut_short(live.stream)
        # Ended as a lookup would end it: with its app sessions.
        assert await site.redis.exists(keys.app_session(live.app_session_id)) == 0
    await aborted_as_session_ended(site.redis, "/sse")


@pytest.fixture
def app_sessions(redis: aioredis.Redis, clock: ManualClock) -> AppSessions:
    return AppSessions(redis, clock, Sessions())


async def announced(redis: aioredis.Redis, action: Awaitable[object]) -> list[bytes]:
    """The session events published while `action` runs."""
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(keys.session_events_channel())
        async with asyncio.timeout(WAIT_S):
            while (await pubsub.get_message(timeout=0.5)) is None:
                pass  # the subscribe confirmation
        await action
        # Publishing happened inside the script that the action awaited: already queued.
        out: list[bytes] = []
        while (message := await pubsub.get_message(timeout=0.5)) is not None:
            if message["type"] == "message":
                out.append(message["data"])
        return out
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_ending_an_app_session_deletes_and_announces_it_once(
    redis: aioredis.Redis, app_sessions: AppSessions
) -> None:
    token = "t" * 43
    await redis.set(keys.console_session("s1"), json.dumps({"principal": "staff:sam"}))
    assert await app_sessions.create(token, "s1", "staff:sam", ACME)
    ident = sid_of(token)
    assert await redis.sismember(keys.app_sessions_of("s1"), ident)

    async def five_at_once() -> list[bool]:
        return list(await asyncio.gather(*(app_sessions.end(token) for _ in range(5))))

    ends = asyncio.ensure_future(five_at_once())
    events = await announced(redis, ends)
    assert sorted(ends.result()) == [False, False, False, False, True]  # one end, one event
    assert events == [f"end-app {ident}".encode()]
    assert await redis.exists(keys.app_session(ident)) == 0
    assert not await redis.sismember(keys.app_sessions_of("s1"), ident)
    assert await redis.exists(keys.console_session("s1")) == 1  # the login lives on


@pytest.mark.parametrize("token", [None, "", "short", "x" * 43 + "!", "t" * 43])
async def test_ending_no_app_session_announces_nothing(
    redis: aioredis.Redis, app_sessions: AppSessions, token: str | None
) -> None:
    ends = asyncio.ensure_future(app_sessions.end(token))
    assert await announced(redis, ends) == []
    assert ends.result() is False


@pytest.mark.parametrize("record", [b"not json", b"[1]", b'{"sid": "../x"}', b'{"sid": 7}'])
async def test_a_damaged_app_session_still_ends_and_is_announced(
    redis: aioredis.Redis, app_sessions: AppSessions, record: bytes
) -> None:
    token = "d" * 43
    ident = sid_of(token)
    await redis.set(keys.app_session(ident), record)
    ends = asyncio.ensure_future(app_sessions.end(token))
    assert await announced(redis, ends) == [f"end-app {ident}".encode()]
    assert ends.result() is True
    assert await redis.exists(keys.app_session(ident)) == 0
    assert await redis.keys(keys.app_sessions_of("*")) == []  # no set named by the damage


@pytest.mark.parametrize(
    "data",
    [
        b"end-app",
        b"end-app ",
        b"END-APP abc",
        b"end-apps abc",
        b"end-app abc def",
        b"end-app ../x",
        b"end-app " + b"a" * 129,
        b"end-app \xff\xfe",
        "end-app abc\u0663".encode(),
    ],
)
def test_hostile_app_session_events_name_nothing(data: bytes) -> None:
    assert session_event(data) is None
    assert ended_session_id(data) is None


def test_an_app_session_event_names_only_an_app_session(redis: aioredis.Redis) -> None:
    assert session_event(b"end-app " + b"a" * 64) == (END_APP, "a" * 64)
    assert ended_session_id(b"end-app abc") is None  # never read as a console session
    in_flight = InFlightFlows()
    SessionEnds(redis, in_flight, ManualClock(), Sessions()).on_event(b"end-app abc")
    assert list(in_flight._ended_app_sessions) == ["abc"]
    assert not in_flight._ended_sessions
    SessionEnds(redis, in_flight, ManualClock(), Sessions()).on_event(b"end abc")
    assert list(in_flight._ended_sessions) == ["abc"]


def test_remembered_ended_app_sessions_are_bounded() -> None:
    in_flight = InFlightFlows()
    for index in range(REMEMBERED_ENDED_SESSIONS + 10):
        assert in_flight.abort_app_session(f"a-{index}") == 0
    assert len(in_flight._ended_app_sessions) == REMEMBERED_ENDED_SESSIONS
    assert "a-0" not in in_flight._ended_app_sessions
    assert not in_flight._ended_sessions
