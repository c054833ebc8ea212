"""A real gateway whose logged-in browsers hold streams open, and the waits on those streams.

The gateway is served over HTTPS (console + routed host) in front of a real upstream with
an SSE stream and a websocket (`tests.gateway.proxyharness.Upstream`); Sam holds a real
grant to act as Bob. The `running` fixture starts it; `streaming` logs a browser in and
holds its `/sse` stream open past the first event (the upstream holds the second until
`first_event_seen` is set), so that a test can end the login and watch the stream end.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from audit.frame import decode_frame
from gateway import keys
from gateway.access import AccessStore
from gateway.access.service import ACCESS
from gateway.accounts import PasswordHasher, open_accounts
from gateway.app import IN_FLIGHT, STAGES
from gateway.clock import ManualClock
from gateway.config import TlsFiles
from gateway.flow import SESSION_ENDED, InFlightFlows
from gateway.sessions.ends import RECHECK_EVERY_S, SessionEnds
from gateway.tls import ensure_demo_tls
from tests.gateway.held import HeldStage, held_after
from tests.gateway.proxyharness import Upstream
from tests.gateway.sessions.harness import (
    ACME,
    CONSOLE_HOST,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Site,
    add_alice_and_sam,
    serve,
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

WAIT_S = 15.0  # generous: a loaded machine; nothing else ends these exchanges this soon
RECHECK_WAIT_S = RECHECK_EVERY_S + 15  # one periodic re-check, on a loaded machine


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
    alice, sam = await add_alice_and_sam(accounts)
    await accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    access = AccessStore(redis, clock)
    request = await access.file(
        sam,
        org="acme",
        member="bob",
        justification="ticket 7: exports hang",
        duration_s=3600,
        scope="write",
    )
    await access.approve(request.id, alice)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config, app, runner = await serve(sock, tmp_path, demo, policy, clock, redis_url)
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


async def first_event(stream: aiohttp.ClientResponse) -> None:
    """The SSE stream's first event arrived (the upstream holds the second)."""
    first = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), WAIT_S)
    assert first.startswith(b"id: 1")


async def cut_short(stream: aiohttp.ClientResponse, within_s: float = WAIT_S) -> bytes:
    """What is left of a stream once it ends (a cut connection reads as nothing more)."""
    try:
        return await asyncio.wait_for(stream.content.read(), within_s)
    except aiohttp.ClientPayloadError:
        return b""


async def cut_by_the_periodic_recheck(stream: aiohttp.ClientResponse) -> None:
    """The stream ends before its second event, within one periodic re-check.

    No direct call: the app's own listener must find what ended.
    """
    loop = asyncio.get_running_loop()
    since = loop.time()
    assert b"id: 2" not in await cut_short(stream, RECHECK_WAIT_S)
    assert loop.time() - since < RECHECK_WAIT_S


async def goes_on(running: Running, stream: aiohttp.ClientResponse) -> None:
    """The upstream lets the second event go, and the stream delivers it."""
    running.upstream.first_event_seen.set()
    rest = await asyncio.wait_for(stream.content.read(), WAIT_S)
    assert b"id: 2" in rest


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


async def aborted_as_session_ended(redis: aioredis.Redis, path: str) -> None:
    """The audit says the request to `path` was cut because its session ended."""
    outcome = await outcome_of(redis, path)
    assert outcome["error"]["code"] == "aborted", outcome
    assert outcome["error"]["message"] == SESSION_ENDED


async def not_aborted(redis: aioredis.Redis, path: str) -> None:
    """The audit says the request to `path` ran to its end."""
    outcome = await outcome_of(redis, path)
    assert "error" not in outcome or outcome["error"].get("code") != "aborted"


@dataclass
class Streaming:
    """One logged-in browser's open `/sse` stream and what the gateway holds of it."""

    stream: aiohttp.ClientResponse
    in_flight: InFlightFlows
    app_session_id: str
    session_id: str
    ends: SessionEnds  # a re-check over the site's own in-flight flows, called directly


@asynccontextmanager
async def sse(site: Site, browser: Browser) -> AsyncIterator[aiohttp.ClientResponse]:
    """Hold `browser`'s `/sse` stream open past its first event (it must be logged in)."""
    async with browser.session.get(site.routed(ACME, "/sse")) as stream:
        assert stream.status == 200
        await first_event(stream)
        yield stream


@asynccontextmanager
async def streaming(site: Site, browser: Browser) -> AsyncIterator[Streaming]:
    """Log `browser` in and hold its `/sse` stream open past the first event.

    It must be the site's only stream: its one app session and one login are named.
    """
    await logged_in(site, browser)
    async with sse(site, browser) as stream:
        in_flight = site.app[IN_FLIGHT]
        [app_session_id] = in_flight.app_session_ids()
        [session_id] = in_flight.session_ids()
        ends = SessionEnds(site.redis, in_flight, site.clock, site.config.sessions)
        yield Streaming(stream, in_flight, app_session_id, session_id, ends)


async def rewrite(redis: aioredis.Redis, key: str, **changes: object) -> None:
    """Change fields of the JSON record at `key` in place (its TTL kept, no event).

    A change to None deletes that field.
    """
    stored = await redis.get(key)
    assert stored is not None
    record = json.loads(stored)
    for name, value in changes.items():
        if value is None:
            del record[name]
        else:
            record[name] = value
    assert await redis.set(key, json.dumps(record), xx=True, keepttl=True)


@asynccontextmanager
async def two_logins(site: Site) -> AsyncIterator[tuple[Browser, Browser]]:
    """Two browsers, each with a login of its own (Sam's, twice)."""
    async with site.browser() as first, site.browser() as second:
        await logged_in(site, first)
        site.clock.advance(30)  # a TOTP time step is usable once per account
        await logged_in(site, second)
        yield first, second


def held_after_session(site: Site) -> HeldStage:
    """A stage right after the session stage of `site`'s gateway, holding each flow."""
    return held_after(site.app[STAGES], "session")
