"""Test harness for the proxy: a recording upstream, a gateway app with a test grant stage.

The upstream is a real aiohttp server on loopback that records exactly what reached it
(raw header list, raw path, body bytes). The gateway is the real app from `create_app`
with real Redis; the only test-only part is `GrantForTest`, a stage inserted where the
grant stage goes, so that proxy-core tests can build an authorised flow.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from audit.frame import decode_frame
from gateway.app import IN_FLIGHT, STAGES, create_app, runner_kwargs
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, parse_config
from gateway.flow import Flow, InFlightFlows
from gateway.identity import ActingGrant, Principal, PrincipalKind
from gateway.keys import audit_stream
from gateway.runner import GatewayRunner
from policies.model import Scope

HOST = "acme.test"
CONSOLE = "gateway.test"
SAM = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")


def make_grant(clock: ManualClock, scope: Scope = Scope.WRITE, org: str = "acme") -> ActingGrant:
    now = clock.now()
    return ActingGrant("g-1", org, "bob", SAM, scope, now - 60, now + 3600)


STANDS_IN_FOR = frozenset({"session", "mfa", "grant"})


class GrantForTest:
    """Test-only stand-in for the session and grant stages: every flow gets `grant`."""

    name = "grant"

    def __init__(self, grant: ActingGrant | None, in_flight: InFlightFlows) -> None:
        self.grant = grant
        self.in_flight = in_flight
        self.seen: list[Flow] = []

    async def __call__(self, flow: Flow) -> None:
        self.seen.append(flow)
        if self.grant is not None:
            flow.principal = self.grant.actor
            flow.grant = self.grant
            self.in_flight.add(flow)  # as the grant stage does


@dataclass
class Received:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class Upstream:
    """The customer application stand-in; it records what it receives."""

    received: list[Received] = field(default_factory=list)
    first_event_seen: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk_in: asyncio.Event = field(default_factory=asyncio.Event)
    ws_closes: list[int | None] = field(default_factory=list)
    ws_messages: list[str] = field(default_factory=list)
    port: int = 0

    def app(self) -> web.Application:
        # The customer app sees bodies exactly as sent (no inflating of gzip bodies).
        app = web.Application(
            client_max_size=1 << 30,
            handler_args={
                "auto_decompress": False,
                "max_field_size": 1 << 16,
                "max_line_size": 1 << 16,
            },
        )
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        handler = {
            "/sse": self.sse,
            "/ws": self.websocket,
            "/slow": self.slow,
            "/redirect": self.redirect,
            "/chunked": self.chunked,
            "/gzip": self.gzipped,
            "/upload": self.upload,
            "/big": self.big,
            "/hang": self.hang,
            "/nocontent": self.no_content,
        }.get(path, self.echo)
        return await handler(request)

    def record(self, request: web.Request, body: bytes) -> Received:
        got = Received(
            request.method,
            request.raw_path,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body,
        )
        self.received.append(got)
        return got

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        got = self.record(request, body)
        return web.json_response(
            {
                "method": got.method,
                "path": got.raw_path,
                "headers": got.headers,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            if size == 0:
                self.first_chunk_in.set()
            size += len(chunk)
            digest.update(chunk)
        self.record(request, b"")
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: first\n\n")
        # Event 2 is withheld until the client has received event 1.
        await asyncio.wait_for(self.first_event_seen.wait(), 10)
        await response.write(b"id: 2\ndata: second\n\n")
        await response.write_eof()
        return response

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"")
        ws = web.WebSocketResponse(protocols=("chat.v1",))
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.ws_messages.append(message.data)
                if message.data.startswith("close:"):
                    await ws.close(code=int(message.data[6:]), message=b"upstream says bye")
                    break
                await ws.send_str("echo:" + message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        self.ws_closes.append(ws.close_code)
        return ws

    async def no_content(self, request: web.Request) -> web.Response:
        self.record(request, b"")
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(status=204, headers={"ETag": '"v1"'})

    async def slow(self, request: web.Request) -> web.Response:
        self.record(request, b"")
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def hang(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"")
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.sleep(30)
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        self.record(request, b"")
        response = web.Response(
            status=302,
            headers={"Location": f"http://127.0.0.1:{self.port}/landing?x=1"},
        )
        response.headers.add("Set-Cookie", "app=1; Domain=127.0.0.1; Path=/; HttpOnly")
        response.headers.add("Set-Cookie", "__Host-gw_app=planted; Path=/; Secure")
        response.headers.add("Set-Cookie", "__HOST-GW_CONSOLE=planted; Path=/")
        response.headers.add("Content-Location", "/relative")
        return response

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(5):
            await response.write(f"part{index};".encode())
        await response.write_eof()
        return response

    async def gzipped(self, request: web.Request) -> web.Response:
        self.record(request, b"")
        body = gzip.compress(b"hello " * 100)
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def big(self, request: web.Request) -> web.StreamResponse:
        self.record(request, b"")
        size = int(request.query.get("n", "1000000"))
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        block = b"x" * 65536
        sent = 0
        while sent < size:
            part = block[: size - sent]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response


# Routed hosts beside acme.test: another of acme's applications, and another org's.
SIBLING_ROUTES = """  - name: acme-api
    hosts: [api.acme.test]
    upstream: http://127.0.0.1:1
    org: acme
    default: allow
    rules: []
  - name: beta
    hosts: [beta.test]
    upstream: http://127.0.0.1:1
    org: beta
    default: allow
    rules: []
"""


def policy_yaml(upstream_port: int, scheme: str = "http", **options: Any) -> str:
    options.setdefault("websockets", "true")
    extra = "".join(f"    {key}: {value}\n" for key, value in options.items())
    return f"""routes:
  - name: acme
    hosts: [{HOST}]
    upstream: {scheme}://127.0.0.1:{upstream_port}
    org: acme
    default: allow
    timeouts: {{connect_s: 2, read_s: 1.5, websocket_idle_s: 1.0}}
{extra}    rules:
      - deny: {{prefix: /admin}}
      - deny: {{prefix: /records, methods: [DELETE, PUT]}}
  - name: down
    hosts: [down.test]
    upstream: http://127.0.0.1:1
    org: acme
    default: allow
    rules: []
{SIBLING_ROUTES}"""


def gateway_config(tmp: Path, policy: str, **limits: int) -> GatewayConfig:
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(policy)
    limit_lines = "".join(f"  {k}: {v}\n" for k, v in limits.items())
    text = f"""console_url: https://{CONSOLE}:8443
data_dir: {tmp / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{policy_file}]
trusted_proxies: [10.9.9.0/24]
""" + (f"limits:\n{limit_lines}" if limits else "")
    return parse_config(text, "test.yaml")


class GatewayTestServer(TestServer):
    """aiohttp's TestServer serving through the gateway's runner."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@dataclass
class Gateway:
    server: GatewayTestServer
    upstream: Upstream
    grant_stage: GrantForTest
    redis: aioredis.Redis

    @property
    def in_flight(self) -> InFlightFlows:
        return self.server.app[IN_FLIGHT]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def audit_bodies(self) -> list[dict[str, Any]]:
        entries: Any = await self.redis.xrange(audit_stream())
        return [decode_frame(fields[b"f"]).decode_body() for _, fields in entries]

    async def audit_settled(self, outcomes: int) -> list[dict[str, Any]]:
        """The audit bodies once `outcomes` outcome records are in (written after the answer)."""
        # A bound in time, not in tries: a loaded machine makes each try slower.
        deadline = asyncio.get_running_loop().time() + 30.0
        while True:
            bodies = await self.audit_bodies()
            done = [b for b in bodies if b.get("record") in ("http.outcome", "http.denial")]
            if len(done) >= outcomes or asyncio.get_running_loop().time() > deadline:
                return bodies
            await asyncio.sleep(0.02)

    async def raw(self, data: bytes, wait_s: float = 5.0) -> bytes:
        """Send raw bytes on a new connection; everything the gateway answers."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        try:
            writer.write(data)
            await writer.drain()
            chunks = []
            async with asyncio.timeout(wait_s):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
            return b"".join(chunks)
        finally:
            writer.close()


GatewayFactory = Callable[..., Awaitable[Gateway]]


def share_keys(source: Path, target: Path) -> None:
    """Give data dir `target` the keys every instance on one Redis shares, from `source`
    (once its first gateway made them): see gateway.key_agreement."""
    if source == target or not (source / "keys").exists():
        return
    shutil.copytree(source / "keys", target / "keys")
    (target / "audit-keys").mkdir(mode=0o700, parents=True)
    shutil.copy2(source / "audit-keys" / "redaction.key", target / "audit-keys")


@pytest.fixture
async def gateway_factory(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> AsyncIterator[GatewayFactory]:
    started: list[TestServer] = []
    homes: list[Path] = []

    async def make(
        *,
        scope: Scope = Scope.WRITE,
        grant: bool = True,
        limits: dict[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
        redis_url_override: str | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        upstream_port: int | None = None,  # route to another server than the recording one
        customise: Callable[[web.Application], None] | None = None,
        **route_options: Any,
    ) -> Gateway:
        upstream = Upstream()
        upstream_server = TestServer(upstream.app(), host="127.0.0.1")
        await upstream_server.start_server(ssl=upstream_tls)
        started.append(upstream_server)
        assert upstream_server.port is not None
        upstream.port = upstream_server.port
        home = tmp_path / f"gateway-{len(started)}"  # each gateway its own files
        home.mkdir()
        homes.append(home)
        # ... but the keys of the first: instances on one Redis must share them.
        share_keys(homes[0] / "data", home / "data")
        config = gateway_config(
            home,
            policy_yaml(
                upstream_port or upstream.port, "https" if upstream_tls else "http", **route_options
            ),
            **(limits or {}),
        )
        app = create_app(config, clock=clock, redis_url=redis_url_override or redis_url)
        stage = GrantForTest(make_grant(clock, scope) if grant else None, app[IN_FLIGHT])
        # The test stage stands in for the session, mfa and grant stages, in their place.
        stages = app[STAGES]
        stages[:] = [s for s in stages if s.name not in STANDS_IN_FOR]
        stages.insert(1, stage)
        if customise is not None:
            customise(app)
        server = GatewayTestServer(app, host="127.0.0.1")
        await server.start_server(ssl=tls, **runner_kwargs(config))
        started.append(server)
        return Gateway(server, upstream, stage, redis)

    yield make
    for server in reversed(started):
        await server.close()
