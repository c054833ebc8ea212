"""The grant stage inside the real gateway: a real upstream, real Redis, the real watcher.

Only the login (session and mfa stages) is stood in for: every flow is Sam's. Everything
from the grant check on is production code: approvals open the route, the Clock closes
it, revocation ends in-flight responses and websockets at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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
from gateway.access.watcher import GrantWatcher
from gateway.app import STAGES, create_app, runner_kwargs
from gateway.clock import ManualClock
from gateway.flow import Flow
from gateway.identity import Principal
from gateway.pipeline import Stage
from tests.gateway.access.conftest import ALICE, ORG, SAM, approved
from tests.gateway.held import held_after
from tests.gateway.proxyharness import (
    HOST,
    GatewayTestServer,
    Upstream,
    gateway_config,
    policy_yaml,
)

WAIT_S = 15.0  # generous bound on waits for another task: a loaded machine is slow


class LoggedIn:
    """Stands in for the session and mfa stages: every flow belongs to `principal`."""

    name = "session"

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    async def __call__(self, flow: Flow) -> None:
        flow.principal = self.principal


@dataclass
class Running:
    url: str
    upstream: Upstream
    watcher: GrantWatcher
    session: aiohttp.ClientSession
    stages: list[Stage]

    async def get(self, path: str = "/page") -> tuple[int, dict[str, object]]:
        async with self.session.get(self.url + path, headers={"Host": HOST}) as response:
            return response.status, await response.json()


@pytest.fixture
async def running(
    tmp_path: Path, directory: aioredis.Redis, redis_url: str, clock: ManualClock
) -> AsyncIterator[Running]:
    async with started(tmp_path, redis_url, clock) as (running, _):
        yield running


@contextlib.asynccontextmanager
async def started(
    tmp_path: Path, redis_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Running, GatewayTestServer]]:
    upstream = Upstream()
    upstream_server = TestServer(upstream.app(), host="127.0.0.1")
    await upstream_server.start_server()
    assert upstream_server.port is not None
    upstream.port = upstream_server.port
    config = gateway_config(tmp_path, policy_yaml(upstream.port))
    app = create_app(config, clock=clock, redis_url=redis_url)
    stages = app[STAGES]
    stages[:] = [s for s in stages if s.name not in ("session", "mfa")]
    stages.insert(1, LoggedIn(SAM))
    server = GatewayTestServer(app, host="127.0.0.1")
    await server.start_server(**runner_kwargs(config))
    service = app[ACCESS]
    # Wait until the watcher's subscription is up, as it is in a running gateway (generous:
    # a loaded machine).
    async with asyncio.timeout(WAIT_S):
        while not service.watcher.healthy:  # noqa: ASYNC110 (polling another task's state)
            await asyncio.sleep(0.02)
    session = aiohttp.ClientSession()
    try:
        running = Running(
            f"http://127.0.0.1:{server.port}", upstream, service.watcher, session, stages
        )
        yield running, server
    finally:
        await session.close()
        await server.close()
        await upstream_server.close()


async def test_no_grant_is_denied(running: Running) -> None:
    status, body = await running.get()
    assert (status, body["error"]) == (403, "no_grant")
    assert running.upstream.received == []


async def test_approval_opens_and_the_clock_closes(
    running: Running, store: AccessStore, clock: ManualClock
) -> None:
    rid = await approved(store, duration_s=600)
    status, body = await running.get()
    assert status == 200
    assert body["path"] == "/page"
    [seen] = running.upstream.received
    assert seen.header("X-Gateway-Grant") == [rid]
    assert seen.header("X-Gateway-User") == ["bob"]
    clock.advance(600)
    # Nothing was swept or published yet: the check itself judges the time.
    status, body = await running.get()
    assert (status, body["error"]) == (403, "grant_expired")
    assert len(running.upstream.received) == 1


async def test_revocation_denies_the_next_request(running: Running, store: AccessStore) -> None:
    rid = await approved(store)
    assert (await running.get())[0] == 200
    assert (await running.get())[0] == 200  # served from the watcher's cache
    await store.revoke(rid, ALICE, comment="done")
    status, body = await running.get()
    assert (status, body["error"]) == (403, "grant_revoked")


async def test_read_grant_cannot_write(running: Running, store: AccessStore) -> None:
    await approved(store, scope="read")
    async with running.session.post(
        running.url + "/page", headers={"Host": HOST}, data=b"x"
    ) as response:
        assert response.status == 403
    assert running.upstream.received == []


async def test_revocation_ends_an_in_flight_response(running: Running, store: AccessStore) -> None:
    rid = await approved(store)
    async with running.session.get(running.url + "/hang", headers={"Host": HOST}) as response:
        assert response.status == 200
        assert await response.content.readexactly(7) == b"partial"
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        await store.revoke(rid, ALICE)
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async with asyncio.timeout(3):
                await response.content.read()
        # The route's upstream read timeout (1.5 s) would also cut this response: only a
        # cut well before it shows that the revocation ended it.
        assert loop.time() - revoked_at < 1.0


async def test_revocation_between_check_and_forward_forwards_nothing(
    running: Running, store: AccessStore
) -> None:
    rid = await approved(store)
    held = held_after(running.stages, "grant")
    request = asyncio.ensure_future(running.get())
    await asyncio.wait_for(held.entered.wait(), WAIT_S)
    await store.revoke(rid, ALICE)
    async with asyncio.timeout(WAIT_S):
        while rid in running.watcher._seen:  # noqa: ASYNC110 (the watcher heard the revocation)
            await asyncio.sleep(0.01)
    held.release.set()
    status, body = await request
    assert status == 403
    assert body["error"] == "grant_ended"
    assert running.upstream.received == []


async def test_revocation_closes_an_open_websocket(running: Running, store: AccessStore) -> None:
    rid = await approved(store)
    async with running.session.ws_connect(running.url + "/ws", headers={"Host": HOST}) as ws:
        await ws.send_str("hello")
        reply = await ws.receive(timeout=3)
        assert reply.data == "echo:hello"
        await store.revoke(rid, SAM)
        message = await ws.receive(timeout=3)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1008


async def test_cache_is_dropped_when_the_subscription_is_lost(
    running: Running, store: AccessStore, directory: aioredis.Redis
) -> None:
    rid = await approved(store)
    assert (await running.get())[0] == 200
    pointer = keys.live_grant(SAM.key, ORG)
    # A change nobody published is not seen while the cache is trusted...
    await directory.hset(pointer, "scope", "read")
    async with running.session.post(
        running.url + "/page", headers={"Host": HOST}, data=b"x"
    ) as response:
        assert response.status == 200
    # ...but once the subscription is lost, nothing is cached: every check reads Redis.
    for client in await directory.client_list(_type="pubsub"):
        await directory.client_kill_filter(_id=client["id"])
    async with asyncio.timeout(WAIT_S):
        while running.watcher.healthy:  # noqa: ASYNC110 (polling another task's state)
            await asyncio.sleep(0.01)
    await directory.hset(pointer, "state", "revoked")
    status, body = await running.get()
    assert (status, body["error"]) == (403, "grant_revoked")
    assert (await store.require(rid)).id == rid


async def _outcome_error(directory: aioredis.Redis, path: str) -> str | None:
    """The error code of the audit outcome for `path`, once written (after the answer)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        entries: Any = await directory.xrange(keys.audit_stream())
        for _, fields in entries:
            body = decode_frame(fields[b"f"]).decode_body()
            if body.get("record") in ("http.outcome", "http.denial") and (
                body.get("url", {}).get("path") == path
            ):
                error = body.get("error", {}).get("code")
                return str(error) if error is not None else None
        await asyncio.sleep(0.02)
    raise AssertionError(f"no audit outcome for {path}")


async def test_expiry_ends_an_in_flight_response(
    running: Running, store: AccessStore, clock: ManualClock, directory: aioredis.Redis
) -> None:
    await approved(store, duration_s=60)
    async with running.session.get(running.url + "/hang", headers={"Host": HOST}) as response:
        assert response.status == 200
        assert await response.content.readexactly(7) == b"partial"
        # The gateway's own sweeper notices the time is up and the watcher ends the flow.
        clock.advance(60)
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async with asyncio.timeout(WAIT_S):
                await response.content.read()
    # The route's upstream read timeout would also cut the response: the audit outcome
    # shows it was the grant's end that did.
    assert await _outcome_error(directory, "/hang") == "aborted"


async def test_requests_under_a_grant_are_counted_for_the_summary(
    running: Running, store: AccessStore, directory: aioredis.Redis
) -> None:
    rid = await approved(store)
    for _ in range(3):
        assert (await running.get())[0] == 200
    await running.watcher.flush_usage()
    assert await directory.hget(keys.access_request(rid), "requests") == b"3"


async def test_the_last_request_counts_are_saved_when_the_gateway_stops(
    tmp_path: Path,
    store: AccessStore,
    directory: aioredis.Redis,
    redis_url: str,
    clock: ManualClock,
) -> None:
    rid = await approved(store)
    async with started(tmp_path, redis_url, clock) as (running, server):
        for _ in range(2):
            assert (await running.get())[0] == 200
        await server.close()  # most likely within the flush period: the stop saves them
    assert await directory.hget(keys.access_request(rid), "requests") == b"2"
