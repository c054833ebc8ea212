"""Ending a login ends its open streams and websockets at once, not when the grant ends.

A real gateway over HTTPS (console + routed host), a real upstream with an SSE stream and a
websocket, a real login with TOTP and hand-off, a real grant; then a real logout at the
console (or the account disabled) and what the client, the upstream and the audit see.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from audit.frame import decode_frame
from gateway import keys
from gateway.access import AccessStore
from gateway.access.service import ACCESS
from gateway.accounts import PasswordHasher, open_accounts
from gateway.app import IN_FLIGHT, STAGES, create_app, runner_kwargs
from gateway.clock import ManualClock
from gateway.config import Sessions, TlsFiles, parse_config
from gateway.flow import REMEMBERED_ENDED_SESSIONS, SESSION_ENDED, Flow, InFlightFlows
from gateway.runner import GatewayRunner
from gateway.sessions.ends import RECHECK_EVERY_S, SessionEnds, ended_session_id
from gateway.sessions.records import found_alive
from gateway.tls import ensure_demo_tls, server_context
from tests.gateway.proxyharness import Upstream
from tests.gateway.sessions.harness import (
    ACME,
    ALICE_SECRET,
    CONSOLE_HOST,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Site,
)
from tests.gateway.sessions.harness import Upstream as RecordingUpstream

# Long upstream timeouts: only the end of the login may cut these exchanges in a test.
POLICY = """routes:
  - name: acme
    hosts: [{host}]
    upstream: http://127.0.0.1:{port}
    org: acme
    default: allow
    websockets: true
    timeouts: {{connect_s: 2, read_s: 30, websocket_idle_s: 30}}
    rules: []
"""


@dataclass
class Running:
    site: Site
    upstream: Upstream
    grant_id: str


@pytest.fixture
async def running(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> AsyncIterator[Running]:
    upstream = Upstream()
    upstream_server = TestServer(upstream.app(), host="127.0.0.1")
    await upstream_server.start_server()
    upstream.port = upstream_server.port or 0
    tls = TlsFiles(
        tmp_path / "tls" / "gw.crt", tmp_path / "tls" / "gw.key", tmp_path / "tls" / "ca.crt"
    )
    demo = ensure_demo_tls(tls, names=(CONSOLE_HOST, "*.localhost", ACME))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(host=ACME, port=upstream.port))
    accounts = open_accounts(redis, clock, tmp_path / "data", hasher=PasswordHasher(log2_n=10))
    await accounts.store.put_org("acme", "Acme")
    alice = await accounts.store.put_member("acme", "alice", "alice@acme.example", "Alice", "admin")
    await accounts.store.set_password(alice.key, PASSWORD)
    await accounts.store.set_totp_secret(alice.key, ALICE_SECRET)
    await accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    sam = await accounts.store.put_staff("sam", "sam@vendor.example", "Sam")
    await accounts.store.set_password(sam.key, PASSWORD)
    await accounts.store.set_totp_secret(sam.key, SAM_SECRET)
    access = AccessStore(redis, clock)
    request = await access.file(
        sam.principal,
        org="acme",
        member="bob",
        justification="ticket 7: exports hang",
        duration_s=3600,
        scope="write",
    )
    await access.approve(request.id, alice.principal)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = parse_config(
        f"console_url: https://{CONSOLE_HOST}:{port}\n"
        f"data_dir: {tmp_path / 'data'}\n"
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n"
        f"tls: {{cert_file: {demo.cert_file}, key_file: {demo.key_file}}}\n"
        f"policy_files: [{policy}]\n",
        "logout-flows.yaml",
    )
    app = create_app(config, clock=clock, redis_url=redis_url)
    runner = GatewayRunner(app, **runner_kwargs(config))
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=server_context(config.tls))
    await site.start()
    try:
        watcher = app[ACCESS].watcher
        async with asyncio.timeout(15):
            while not watcher.healthy:  # noqa: ASYNC110 (the app's own task subscribes)
                await asyncio.sleep(0.02)
        yield Running(
            Site(port, config, accounts, redis, clock, RecordingUpstream(), demo.ca_file, app),
            upstream,
            request.id,
        )
    finally:
        upstream.first_event_seen.set()  # lets a held SSE handler finish
        await runner.cleanup()
        await upstream_server.close()


async def logged_in(site: Site, browser: Browser) -> None:
    """Sam walks the hand-off to the routed host with password and TOTP."""
    first = await browser.get(site.routed(ACME, "/"))
    assert first.status == 303, first.text
    done = await browser.login("sam@vendor.example", PASSWORD, SAM_SECRET, start=first.location)
    assert done.status == 303, done.text
    back = await browser.get(done.location)
    assert back.status == 303, back.text


WAIT_S = 15.0  # generous: a loaded machine; nothing else ends these exchanges this soon


async def first_event(stream: aiohttp.ClientResponse) -> None:
    """The SSE stream's first event arrived (the upstream holds the second)."""
    first = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), WAIT_S)
    assert first.startswith(b"id: 1")


async def cut_short(stream: aiohttp.ClientResponse) -> bytes:
    """What is left of a stream once it ends (a cut connection reads as nothing more)."""
    try:
        return await asyncio.wait_for(stream.content.read(), WAIT_S)
    except aiohttp.ClientPayloadError:
        return b""


async def heard(ended: Sized) -> None:
    """Wait until the listener has remembered an end (`ended` is one of its tables)."""
    async with asyncio.timeout(WAIT_S):
        while not ended:  # noqa: ASYNC110 (the listener's work)
            await asyncio.sleep(0.02)


async def outcome_of(redis: aioredis.Redis, path: str) -> dict[str, Any]:
    """The audit outcome record of the proxied request to `path` (written after the end)."""
    async with asyncio.timeout(15):
        while True:
            entries: Any = await redis.xrange(keys.audit_stream())
            for _, fields in entries:
                body = decode_frame(fields[b"f"]).decode_body()
                if body.get("record") in ("http.outcome", "http.denial") and (
                    body.get("url", {}).get("path") == path
                ):
                    return body
            await asyncio.sleep(0.02)


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
        outcome = await outcome_of(site.redis, path)
        assert outcome["error"]["code"] == "aborted", outcome
        assert outcome["error"]["message"] == SESSION_ENDED
    assert running.upstream.ws_closes == [1008]
    assert len(site.app[IN_FLIGHT]) == 0


async def test_disabling_the_account_ends_its_open_stream(running: Running) -> None:
    site = running.site
    async with site.browser() as browser:
        await logged_in(site, browser)
        async with browser.session.get(site.routed(ACME, "/sse")) as stream:
            await first_event(stream)
            assert await site.accounts.store.set_disabled("staff:sam", True) == 1
            rest = await cut_short(stream)
            assert b"id: 2" not in rest
    outcome = await outcome_of(site.redis, "/sse")
    assert outcome["error"]["code"] == "aborted"
    assert outcome["error"]["message"] == SESSION_ENDED


async def test_another_login_of_the_same_person_keeps_its_stream(running: Running) -> None:
    site = running.site
    async with site.browser() as kept, site.browser() as ended:
        await logged_in(site, kept)
        site.clock.advance(30)  # a TOTP time step is usable once per account
        await logged_in(site, ended)
        async with kept.session.get(site.routed(ACME, "/sse")) as stream:
            await first_event(stream)
            out = await ended.form(site.console("/logout"), {})
            assert out.status == 200
            # The other browser's logout was heard (its session is remembered as ended) ...
            in_flight = site.app[IN_FLIGHT]
            await heard(in_flight._ended_sessions)
            # ... and this login's stream goes on to its end.
            running.upstream.first_event_seen.set()
            rest = await asyncio.wait_for(stream.content.read(), 5)
            assert b"id: 2" in rest
    outcome = await outcome_of(site.redis, "/sse")
    assert "error" not in outcome or outcome["error"].get("code") != "aborted"


class HeldAfterSession:
    """A test stage right after the session stage: holds each flow until released."""

    name = "held"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, flow: Flow) -> None:
        self.entered.set()
        await self.release.wait()


def held_after_session(site: Site) -> HeldAfterSession:
    """A HeldAfterSession put right after the session stage of `site`'s gateway."""
    stages = site.app[STAGES]
    held = HeldAfterSession()
    stages.insert([stage.name for stage in stages].index("session") + 1, held)
    return held


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
        page = await asyncio.wait_for(request, 5)
    assert page.status == 403
    assert json.loads(page.text)["error"] == SESSION_ENDED
    assert running.upstream.received == []


async def test_an_end_missed_by_the_listener_is_found_by_the_recheck(running: Running) -> None:
    site = running.site
    async with site.browser() as browser:
        await logged_in(site, browser)
        async with browser.session.get(site.routed(ACME, "/sse")) as stream:
            await first_event(stream)
            in_flight = site.app[IN_FLIGHT]
            [session_id] = in_flight.session_ids()
            ends = SessionEnds(site.redis, in_flight, site.clock, site.config.sessions)
            assert await ends.recheck() == 0  # alive: nothing ended
            # The session's record goes without any event (as if published while this
            # process was not subscribed).
            await site.redis.delete(keys.console_session(session_id))
            assert await ends.recheck() == 2  # the login and its app session, each judged dead
            rest = await cut_short(stream)
            assert b"id: 2" not in rest
    outcome = await outcome_of(site.redis, "/sse")
    assert outcome["error"]["message"] == SESSION_ENDED


async def test_a_login_past_its_lifetime_loses_its_stream_within_the_recheck(
    running: Running,
) -> None:
    site = running.site
    async with site.browser() as browser:
        await logged_in(site, browser)
        async with browser.session.get(site.routed(ACME, "/sse")) as stream:
            await first_event(stream)
            [session_id] = site.app[IN_FLIGHT].session_ids()
            # The login was made one absolute lifetime ago by the Clock (the grant, shorter,
            # stays valid); its record stays in Redis and no end is published: only the
            # Clock says the login is over.
            key = keys.console_session(session_id)
            stored = await site.redis.get(key)
            assert stored is not None
            record = json.loads(stored)
            record["created_at"] = site.clock.now() - site.config.sessions.absolute_lifetime_s
            assert await site.redis.set(key, json.dumps(record), xx=True, keepttl=True)
            loop = asyncio.get_running_loop()
            past_at = loop.time()
            try:
                rest = await asyncio.wait_for(stream.content.read(), RECHECK_EVERY_S + 15)
            except aiohttp.ClientPayloadError:
                rest = b""
            assert b"id: 2" not in rest
            assert loop.time() - past_at < RECHECK_EVERY_S + 15
    # The app's own periodic re-check cut it (the upstream itself gives up after 10 s,
    # which would not read as an abort).
    outcome = await outcome_of(site.redis, "/sse")
    assert outcome["error"]["code"] == "aborted", outcome
    assert outcome["error"]["message"] == SESSION_ENDED
    # Found dead, the login is ended in Redis too, as a lookup would have.
    assert await site.redis.exists(keys.console_session(session_id)) == 0


async def died_by(site: Site, session_id: str, how: str) -> None:
    """Let the login `session_id` die without any published end."""
    key = keys.console_session(session_id)
    if how == "idle":
        site.clock.advance(site.config.sessions.idle_timeout_s)  # the grant lasts longer
    elif how == "damaged":
        assert await site.redis.set(key, b"{not json", xx=True, keepttl=True)
    elif how == "no timestamps":
        stored = await site.redis.get(key)
        assert stored is not None
        record = json.loads(stored)
        del record["last_seen"]
        assert await site.redis.set(key, json.dumps(record), xx=True, keepttl=True)
    else:  # every session of the account ended, its end not heard
        await site.redis.incr(keys.session_epoch("staff:sam"))


@pytest.mark.parametrize("how", ["idle", "damaged", "no timestamps", "epoch"])
async def test_the_recheck_ends_a_stream_of_a_login_the_lookup_would_refuse(
    running: Running, how: str
) -> None:
    site = running.site
    async with site.browser() as browser:
        await logged_in(site, browser)
        async with browser.session.get(site.routed(ACME, "/sse")) as stream:
            await first_event(stream)
            in_flight = site.app[IN_FLIGHT]
            [session_id] = in_flight.session_ids()
            ends = SessionEnds(site.redis, in_flight, site.clock, site.config.sessions)
            await died_by(site, session_id, how)
            assert await ends.recheck() == 2  # the login and its app session, each judged dead
            rest = await cut_short(stream)
            assert b"id: 2" not in rest
            assert await site.redis.exists(keys.console_session(session_id)) == 0
            assert await ends.recheck() == 0  # nothing left in flight
        # The routed host asks for a login again, as the lookup finds nothing.
        again = await browser.get(site.routed(ACME, "/"))
        assert again.status == 303
    outcome = await outcome_of(site.redis, "/sse")
    assert outcome["error"]["message"] == SESSION_ENDED


async def test_the_recheck_neither_ends_nor_refreshes_a_live_login(running: Running) -> None:
    site = running.site
    async with site.browser() as browser:
        await logged_in(site, browser)
        async with browser.session.get(site.routed(ACME, "/sse")) as stream:
            await first_event(stream)
            in_flight = site.app[IN_FLIGHT]
            [session_id] = in_flight.session_ids()
            key = keys.console_session(session_id)
            ends = SessionEnds(site.redis, in_flight, site.clock, site.config.sessions)
            # Idle a while (less than the idle timeout): a lookup now would touch last_seen.
            site.clock.advance(site.config.sessions.idle_timeout_s - 5)
            before = await site.redis.get(key)
            assert list(await asyncio.gather(ends.recheck(), ends.recheck())) == [0, 0]
            # SECURITY: a re-check is no activity: it never postpones the idle timeout.
            assert await site.redis.get(key) == before
            assert len(in_flight.of_session(session_id)) == 1
            running.upstream.first_event_seen.set()
            rest = await asyncio.wait_for(stream.content.read(), 5)
            assert b"id: 2" in rest


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
