"""The product as its users meet it: `gateway demo`'s own stack, started in-process.

`stack_factory(redis_url)` runs what `make demo` runs (`gateway.cli.demo.Demo`): the
demo TLS material, the mail catcher, the real gateway server over HTTPS (one listener on a
free port), the Acme CRM app behind it and the demo directory imported. Only the ports,
the data directory and Redis differ from config/gateway.yaml. A recorder on Acme CRM
keeps every request that reached it, so tests assert on what the upstream really saw.
Clients resolve every name to 127.0.0.1 and trust the demo CA only.
"""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from gateway.accounts.totp import code_at
from gateway.cli.demo import APP_HOST, Demo, DirectoryFile
from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.demo.acme import AcmeSettings
from gateway.demo.mail_catcher import CaughtMessage

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "config" / "demo-directory.yaml"
CONSOLE_HOST = "gateway.localhost"
API = "/.gateway/api/v1"
# The demo people (config/demo-directory.yaml: demo material only).
SAM = ("sam@vendor.example", "demo-sam-password", "JBSWY3DPEHPK3PXPSAMDEMOSECRET234")
ALICE = ("alice@acme.example", "demo-alice-password", "JBSWY3DPEHPK3PXPALICEDEMOSECRET2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LoopbackResolver(AbstractResolver):
    """Every name is 127.0.0.1: the stack is reached by its names, on loopback only."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Seen:
    """One request as Acme CRM received it."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def json(self) -> Any:
        import json

        return json.loads(self.text)


class Person:
    """One person's HTTPS client: their own cookie jar, redirects never followed."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.csrf = ""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=ssl.create_default_context(cafile=str(stack.ca_file)),
                resolver=LoopbackResolver(),
            ),
            cookie_jar=aiohttp.CookieJar(),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, url: str, **kwargs: Any) -> Answer:
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.csrf and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf)
        async with self.session.request(
            method, url, headers=headers, allow_redirects=False, **kwargs
        ) as response:
            return Answer(response.status, dict(response.headers), await response.text())

    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        return await self.call(method, self.stack.console(API + path), json=body)

    async def log_in(self, person: tuple[str, str, str]) -> Answer:
        """The API login: password + the current TOTP code; keeps the CSRF token."""
        email, password, secret = person
        answer = await self.api(
            "POST",
            "/login",
            {"email": email, "password": password, "totp": code_at(secret, SystemClock().now())},
        )
        if answer.status == 200:
            self.csrf = str(answer.json()["csrf_token"])
        return answer

    async def hand_off(self, path: str) -> Answer:
        """Open `path` on the routed host like a browser: console login, code, cookie."""
        first = await self.call("GET", self.stack.routed(path), headers={"Accept": "text/html"})
        if first.status != 303 or not first.location.startswith(self.stack.console("/login")):
            return first
        login = await self.call("GET", first.location, headers={"Accept": "text/html"})
        if not login.location.startswith(self.stack.routed("/.gateway/auth?code=")):
            return login
        exchanged = await self.call("GET", login.location, headers={"Accept": "text/html"})
        if exchanged.status != 303:
            return exchanged
        return await self.call("GET", self.stack.routed(exchanged.location))

    def cookie_names(self, host: str) -> set[str]:
        url = URL(f"https://{host}:{self.stack.port}/")
        return {m.key for m in self.session.cookie_jar.filter_cookies(url).values()}


@dataclass
class Stack:
    demo: Demo
    port: int
    data_dir: Path
    ca_file: Path
    redis_url: str
    out: io.StringIO
    seen: list[Seen] = field(default_factory=list)
    stopped: bool = False

    async def stop(self) -> None:
        """Stop everything the demo started (the audit writer's last checkpoint included)."""
        if not self.stopped:
            self.stopped = True
            await self.demo.stop()

    def console(self, path: str = "/") -> str:
        return f"https://{CONSOLE_HOST}:{self.port}{path}"

    def routed(self, path: str = "/") -> str:
        return f"https://{APP_HOST}:{self.port}{path}"

    @property
    def mail(self) -> list[CaughtMessage]:
        return list(self.demo.catcher.messages)

    async def mail_to(self, address: str, count: int, timeout_s: float = 15.0) -> list[str]:
        """The subjects of mail to `address`, once at least `count` arrived."""
        catcher = self.demo.catcher

        def subjects() -> list[str]:
            return [m.subject for m in catcher.messages if address in m.recipients]

        async with asyncio.timeout(timeout_s), catcher.arrived:
            await catcher.arrived.wait_for(lambda: len(subjects()) >= count)
        return subjects()


StackFactory = Callable[[str], Awaitable[Stack]]


class RecordedDemo(Demo):
    """The demo, with Acme CRM recording every request that reached it."""

    seen: list[Seen]

    def acme_app(self, settings: AcmeSettings) -> web.Application:
        app = super().acme_app(settings)

        async def record(request: web.Request, response: web.StreamResponse) -> None:
            self.seen.append(Seen(request.method, request.raw_path, dict(request.headers)))

        app.on_response_prepare.append(record)
        return app


@pytest.fixture
async def stack_factory(tmp_path: Path) -> AsyncIterator[StackFactory]:
    started: list[Stack] = []

    async def make(redis_url: str) -> Stack:
        port, app_port, smtp_port = free_port(), free_port(), free_port()
        data_dir = tmp_path / "var"
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            (ROOT / "config" / "policies" / "demo.yaml")
            .read_text(encoding="utf-8")
            .replace("http://127.0.0.1:9001", f"http://127.0.0.1:{app_port}"),
            encoding="utf-8",
        )
        config = parse_config(
            f"""console_url: https://{CONSOLE_HOST}:{port}
data_dir: {data_dir}
listeners: [{{address: 127.0.0.1, port: {port}, tls: true}}]
tls: {{cert_file: {data_dir}/tls/gateway.crt, key_file: {data_dir}/tls/gateway.key,
       ca_file: {data_dir}/tls/demo-ca.crt}}
redis: {{url: "{redis_url}"}}
policy_files: [{policy}]
smtp: {{host: 127.0.0.1, port: {smtp_port}, security: plain, sender: gateway@gateway.localhost}}
audit: {{checkpoint_every_frames: 1000, checkpoint_every_s: 10, segment_dir: {data_dir}/audit}}
""",
            str(tmp_path / "gateway.yaml"),
        )
        out = io.StringIO()
        demo = RecordedDemo(config, out)
        demo.seen = []
        stack = Stack(demo, port, data_dir, data_dir / "tls" / "demo-ca.crt", redis_url, out)
        stack.seen = demo.seen
        started.append(stack)
        directory = DirectoryFile(DIRECTORY, DIRECTORY.read_text(encoding="utf-8"))
        await demo.start(app_port, directory)
        return stack

    yield make
    for stack in reversed(started):
        await stack.stop()


@pytest.fixture
async def people() -> AsyncIterator[Callable[[Stack], Person]]:
    made: list[Person] = []

    def make(stack: Stack) -> Person:
        person = Person(stack)
        made.append(person)
        return person

    yield make
    for person in made:
        await person.close()
