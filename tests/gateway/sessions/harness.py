"""A real gateway over real HTTPS for session tests: console + two routed hosts.

The gateway is `create_app` served by the gateway's runner on a loopback TLS socket
with a certificate from `gateway.tls` (demo CA); the upstream is a recording aiohttp
app. Clients resolve every name to 127.0.0.1 and trust the demo CA, so requests carry
the real Host names (`gateway.localhost`, `acme.localhost`, `beta.localhost`).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from audit.frame import decode_frame
from gateway.accounts import Accounts, PasswordHasher, open_accounts
from gateway.accounts.totp import code_at
from gateway.app import create_app, runner_kwargs
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, TlsFiles, parse_config
from gateway.demo.acme import LoopbackResolver  # *.localhost -> 127.0.0.1, nothing else
from gateway.identity import Principal
from gateway.keys import audit_stream
from gateway.runner import GatewayRunner
from gateway.tls import DemoTls, ensure_demo_tls, server_context

CONSOLE_HOST = "gateway.localhost"
ACME = "acme.localhost"
BETA = "beta.localhost"
ALICE_SECRET = "JBSWY3DPEHPK3PXPALICETESTSECRET2"
SAM_SECRET = "JBSWY3DPEHPK3PXPSAMTESTSECRET234"
PASSWORD = "a-long-test-password"


@dataclass
class Upstream:
    paths: list[str] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        self.cookies.append(request.headers.get("Cookie", ""))
        return web.Response(text=f"upstream saw {request.raw_path}")


@dataclass
class Site:
    port: int
    config: GatewayConfig
    accounts: Accounts
    redis: aioredis.Redis
    clock: ManualClock
    upstream: Upstream
    ca_file: Path
    app: web.Application

    def console(self, path: str = "/") -> str:
        return f"https://{CONSOLE_HOST}:{self.port}{path}"

    def routed(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.port}{path}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def browser(self) -> Browser:
        return Browser(self)

    def code(self, secret: str, offset_s: float = 0) -> str:
        return code_at(secret, self.clock.now() + offset_s)

    async def account_events(self) -> list[tuple[str, str]]:
        """(action, outcome) of every account event in the audit stream, in order."""
        entries: Any = await self.redis.xrange(audit_stream())
        out = []
        for _, fields in entries:
            body = decode_frame(fields[b"f"]).decode_body()
            if body.get("record") == "account":
                event = body.get("event", {})
                out.append((str(event.get("action")), str(event.get("outcome"))))
        return out


class Browser:
    """An HTTPS client with a cookie jar that follows nothing by itself."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=site.ssl_context(), resolver=LoopbackResolver()),
            cookie_jar=aiohttp.CookieJar(),
            headers={"Accept": "text/html"},
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, url: str, **kwargs: Any) -> Page:
        async with self.session.get(url, allow_redirects=False, **kwargs) as response:
            return Page(response.status, dict(response.headers), await response.text(), url)

    async def post(self, url: str, **kwargs: Any) -> Page:
        async with self.session.post(url, allow_redirects=False, **kwargs) as response:
            return Page(response.status, dict(response.headers), await response.text(), url)

    async def form(self, url: str, fields: dict[str, str], page: Page | None = None) -> Page:
        """POST a form with the CSRF token of `page` (or of a fresh GET of `url`)."""
        source = page or await self.get(url)
        return await self.post(url, data={"csrf_token": source.csrf, **fields})

    def cookie(self, name: str, host: str) -> str | None:
        for morsel in self.session.cookie_jar.filter_cookies(
            URL(f"https://{host}:{self.site.port}/")
        ).values():
            if morsel.key == name:
                return morsel.value
        return None

    async def login(self, email: str, password: str, secret: str, start: str | None = None) -> Page:
        """Password then TOTP on the console; returns the answer to the TOTP form."""
        first = await self.get(start or self.site.console("/login"))
        if first.status == 303:
            first = await self.get(self.site.console("/login"))
        page = await self.form(
            self.site.console("/login"), {"email": email, "password": password}, first
        )
        assert page.status == 303, page.text
        totp = await self.get(self.site.console("/login/totp"))
        return await self.form(
            self.site.console("/login/totp"), {"code": self.site.code(secret)}, totp
        )


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    text: str
    url: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    @property
    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.text)
        return found.group(1) if found else ""

    def query(self, name: str) -> str:
        values = parse_qs(urlsplit(self.location).query).get(name, [""])
        return values[0]


def _policy(upstream_port: int) -> str:
    return f"""routes:
  - name: acme
    hosts: [{ACME}]
    upstream: http://127.0.0.1:{upstream_port}
    org: acme
    default: allow
    rules: []
  - name: beta
    hosts: [{BETA}]
    upstream: http://127.0.0.1:{upstream_port}
    org: beta
    default: allow
    rules: []
"""


SiteFactory = Callable[..., Awaitable[Site]]


async def add_alice_and_sam(accounts: Accounts) -> tuple[Principal, Principal]:
    """Alice (admin of acme, which must exist) and Sam (staff), each with the test password
    and a TOTP secret of their own."""
    alice = await accounts.store.put_member("acme", "alice", "alice@acme.example", "Alice", "admin")
    await accounts.store.set_password(alice.key, PASSWORD)
    await accounts.store.set_totp_secret(alice.key, ALICE_SECRET)
    sam = await accounts.store.put_staff("sam", "sam@vendor.example", "Sam")
    await accounts.store.set_password(sam.key, PASSWORD)
    await accounts.store.set_totp_secret(sam.key, SAM_SECRET)
    return alice.principal, sam.principal


async def serve(
    sock: socket.socket,
    tmp_path: Path,
    demo: DemoTls,
    policy: Path,
    clock: ManualClock,
    redis_url: str,
    sessions: str = "",
) -> tuple[GatewayConfig, web.Application, GatewayRunner]:
    """The gateway, configured for the bound `sock`, serving HTTPS on it (console and routed
    hosts); the caller cleans the runner up."""
    port = sock.getsockname()[1]
    config = parse_config(
        f"console_url: https://{CONSOLE_HOST}:{port}\n"
        f"data_dir: {tmp_path / 'data'}\n"
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n"
        f"tls: {{cert_file: {demo.cert_file}, key_file: {demo.key_file}}}\n"
        f"policy_files: [{policy}]\n" + (f"sessions: {{{sessions}}}\n" if sessions else ""),
        "session-test.yaml",
    )
    app = create_app(config, clock=clock, redis_url=redis_url)
    runner = GatewayRunner(app, **runner_kwargs(config))
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=server_context(config.tls))
    await site.start()
    return config, app, runner


@pytest.fixture
async def site_factory(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> AsyncIterator[SiteFactory]:
    cleanups: list[Callable[[], Awaitable[None]]] = []
    upstream = Upstream()
    upstream_server = TestServer(upstream.app(), host="127.0.0.1")
    await upstream_server.start_server()
    cleanups.append(upstream_server.close)
    tls = TlsFiles(
        tmp_path / "tls" / "gw.crt", tmp_path / "tls" / "gw.key", tmp_path / "tls" / "ca.crt"
    )
    demo = ensure_demo_tls(tls, names=(CONSOLE_HOST, "*.localhost", ACME, BETA))
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(upstream_server.port or 0))
    accounts = open_accounts(redis, clock, tmp_path / "data", hasher=PasswordHasher(log2_n=10))
    await accounts.store.put_org("acme", "Acme")
    await accounts.store.put_org("beta", "Beta")
    await add_alice_and_sam(accounts)

    async def make(sessions: str = "", port: int | None = None) -> Site:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port or 0))
        chosen = sock.getsockname()[1]
        config, app, runner = await serve(sock, tmp_path, demo, policy, clock, redis_url, sessions)
        started = asyncio.get_running_loop().time()

        async def stop() -> None:
            # The app's background tasks may miss a cancel that lands while they are
            # still connecting to Redis at start-up; let them settle first.
            settle = 0.3 - (asyncio.get_running_loop().time() - started)
            if settle > 0:
                await asyncio.sleep(settle)
            await runner.cleanup()

        cleanups.append(stop)
        return Site(chosen, config, accounts, redis, clock, upstream, demo.ca_file, app)

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def site(site_factory: SiteFactory) -> Site:
    return await site_factory()


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[Browser]:
    client = site.browser()
    yield client
    await client.close()
