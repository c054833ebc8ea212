"""Serving the gateway: its listeners, TLS, the plain-HTTP redirect and the process lifetime.

One `aiohttp` runner serves the gateway application on every TLS listener of the config
(one SSL context: TLS 1.2 at least). HTTPS answers carry HSTS; nothing else does. A
listener with `tls: false` never reaches the application: a tiny separate app answers
`/.gateway/healthz` and `/.gateway/readyz` (load balancers probe by address) and, for the
console host and routed hosts only, 308 to the same host and target on HTTPS; anything
else is 404. uvloop runs the loop when it is installed. SIGTERM and SIGINT stop the
listeners, let in-flight requests finish, then close the application (whose cleanup stops
the embedded Redis). SIGHUP reloads the policy files and the TLS certificate and key (each
keeps what it had when its new files are bad).

    gateway run --config config/gateway.yaml

    server = GatewayServer(config, app)
    await server.start()      # server.bound: the (address, port, tls) actually listening
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.app import create_app, parser_limits, runner_kwargs
from gateway.appkeys import POLICIES, REDIS
from gateway.config import GatewayConfig, Listener
from gateway.errors import KeyMaterialError
from gateway.heap import settle
from gateway.metrics import metrics_app
from gateway.policy_store import PolicyStore
from gateway.runner import GatewayRunner
from gateway.tls import reload_certificate, server_context

log = logging.getLogger("gateway.server")

HSTS = "max-age=31536000"  # one year; no includeSubDomains: the operator owns the parent domain
SHUTDOWN_GRACE_S = 10.0

# A Host header value: a DNS name or an IPv4 address, optionally with a port. IPv6
# literals are not routed hosts, so they are never redirected.
_HOST = re.compile(r"^([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)(?::(\d{1,5}))?$")

Readiness = Callable[[], Awaitable[bool]]
KnownHost = Callable[[str], bool]


@dataclass(frozen=True)
class Bound:
    address: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.port}"


def handler_settings(config: GatewayConfig) -> dict[str, Any]:
    """Settings of aiohttp's request handler for the gateway's TLS listeners.

    The app's parser limits (above the gateway's own, so that the gateway answers 431
    itself) and access-log choice, plus: request bodies are never decompressed.
    """
    return {**parser_limits(config), **runner_kwargs(config), "auto_decompress": False}


async def _hsts(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # SECURITY: HSTS only on answers that travelled over TLS (RFC 6797 §7.2).
    if request.transport is not None and request.transport.get_extra_info("sslcontext"):
        response.headers["Strict-Transport-Security"] = HSTS


def add_hsts(app: web.Application) -> None:
    """Add the HSTS signal to an application served over TLS (before it is frozen)."""
    if _hsts not in app.on_response_prepare:
        app.on_response_prepare.append(_hsts)


def redirect_app(
    https_port: int | None, known_host: KnownHost, readiness: Readiness
) -> web.Application:
    """The plain-HTTP listener's whole application: health, 308 to HTTPS, else 404."""

    async def answer(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/.gateway/healthz":
            return web.Response(text="ok\n")
        if path == "/.gateway/readyz":
            ready = False
            with contextlib.suppress(Exception):  # any failure of the probe means not ready
                ready = await asyncio.wait_for(readiness(), timeout=2.0)
            return web.Response(
                status=200 if ready else 503, text="ready\n" if ready else "not ready\n"
            )
        match = _HOST.match(request.headers.get("Host", "").lower())
        # SECURITY: redirect only hosts the gateway serves; never forward anything here.
        if https_port is None or match is None or not known_host(match.group(1)):
            return web.Response(status=404, text="not found\n")
        authority = match.group(1) if https_port == 443 else f"{match.group(1)}:{https_port}"
        target = request.raw_path if request.raw_path.startswith("/") else "/"
        return web.Response(
            status=308,
            headers={"Location": f"https://{authority}{target}", "Cache-Control": "no-store"},
            text="use https\n",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def _known_host_of(config: GatewayConfig, app: web.Application) -> KnownHost:
    def known(host: str) -> bool:
        if host == config.console_host:
            return True
        # The gateway app's policy store, looked up per request so hot reloads count.
        try:
            return app[POLICIES].current.route_for(host) is not None
        except Exception:  # SECURITY: no policy at hand means no redirect (fail closed)
            return False

    return known


def _readiness_of(app: web.Application) -> Readiness:
    async def ready() -> bool:
        redis = app.get(REDIS)
        if redis is None:
            return False
        return bool(await redis.ping())

    return ready


class GatewayServer:
    """The gateway's listeners around one application, from start to graceful stop."""

    def __init__(
        self,
        config: GatewayConfig,
        app: web.Application,
        *,
        ssl_context: ssl.SSLContext | None = None,
        known_host: KnownHost | None = None,
        readiness: Readiness | None = None,
        shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    ) -> None:
        self.config = config
        self.app = app
        self._ssl_context = ssl_context
        self._known_host = known_host or _known_host_of(config, app)
        self._readiness = readiness or _readiness_of(app)
        self._grace = shutdown_grace_s
        self._runners: list[web.AppRunner] = []
        self.bound: list[Bound] = []
        self.metrics_bound: Bound | None = None

    async def start(self) -> None:
        """Bind every listener first (a busy port fails before anything starts), then serve."""
        context = self._ssl_context
        if context is None and any(lst.tls for lst in self.config.listeners):
            context = server_context(self.config.tls)
        self._ssl_context = context
        sockets: list[tuple[Listener, socket.socket]] = []
        metrics_sock: socket.socket | None = None
        try:
            for listener in self.config.listeners:
                sockets.append((listener, _bind(listener)))
            if self.config.metrics is not None:
                metrics = Listener(self.config.metrics.address, self.config.metrics.port, tls=False)
                metrics_sock = _bind(metrics)
                self.metrics_bound = Bound(metrics.address, metrics_sock.getsockname()[1], False)
            self.bound = [
                Bound(listener.address, int(sock.getsockname()[1]), listener.tls)
                for listener, sock in sockets
            ]
            tls_sockets = [sock for listener, sock in sockets if listener.tls]
            plain_sockets = [sock for listener, sock in sockets if not listener.tls]
            if tls_sockets:
                add_hsts(self.app)
                runner = GatewayRunner(  # parser refusals answered in the gateway's format
                    self.app,
                    handle_signals=False,
                    shutdown_timeout=self._grace,
                    **handler_settings(self.config),
                )
                self._runners.append(runner)
                await runner.setup()
                for sock in tls_sockets:
                    await web.SockSite(runner, sock, ssl_context=context).start()
            if plain_sockets:
                https_port = next((b.port for b in self.bound if b.tls), None)
                plain = web.AppRunner(
                    redirect_app(https_port, self._known_host, self._readiness),
                    handle_signals=False,
                    access_log=None,
                    shutdown_timeout=1.0,
                )
                self._runners.append(plain)
                await plain.setup()
                for sock in plain_sockets:
                    await web.SockSite(plain, sock).start()
            if metrics_sock is not None:
                # Apart from the console and routed hosts: scraping shares no origin with them.
                runner_m = web.AppRunner(metrics_app(), handle_signals=False, access_log=None)
                self._runners.append(runner_m)
                await runner_m.setup()
                await web.SockSite(runner_m, metrics_sock).start()
        except BaseException:
            # Nothing is listening any more: report nothing bound.
            self.bound, self.metrics_bound = [], None
            if metrics_sock is not None:
                metrics_sock.close()
            await self.stop()
            for _, sock in sockets:
                sock.close()
            raise

    def reload_tls(self) -> bool:
        """Take renewed TLS files for new handshakes; False (old ones kept) when they are bad."""
        if self._ssl_context is None:
            return False
        try:
            reload_certificate(self._ssl_context, self.config.tls)
        except KeyMaterialError as exc:
            log.error("TLS reload failed; the certificate loaded before stays in force: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.config.tls.cert_file)
        return True

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to the grace), close the app."""
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()


def _bind(listener: Listener) -> socket.socket:
    # Bound here, not by aiohttp, so that port 0 (tests) reports the port actually bound.
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    sock = socket.create_server((listener.address, listener.port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The event loop factory to run with, and its name (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop, "asyncio"
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory, "uvloop"


@contextlib.contextmanager
def reload_on_sighup(server: GatewayServer) -> Iterator[None]:
    """SIGHUP reloads the policy files and the TLS files while the block runs."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        # Each keeps what it had when its new files are bad, and logs why; neither's
        # failure keeps the other from being reloaded.
        try:
            store = server.app.get(POLICIES)
            if isinstance(store, PolicyStore):
                store.reload()
        finally:
            server.reload_tls()

    # The default action of SIGHUP ends the process, with every request in flight.
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


@contextlib.contextmanager
def stop_requested() -> Iterator[asyncio.Event]:
    """An event SIGTERM or SIGINT sets while the block runs; the handlers go with it."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        yield stopping
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def serve(
    config: GatewayConfig,
    app: web.Application,
    *,
    on_started: Callable[[GatewayServer], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; SIGHUP reloads policy and TLS."""
    server = GatewayServer(config, app)
    with stop_requested() as stopping, reload_on_sighup(server):
        try:
            await server.start()
            settle()  # the start-up heap frozen: see gateway.heap
            if on_started is not None:
                on_started(server)
            await stopping.wait()
            log.info("stopping: finishing in-flight requests")
        finally:
            await server.stop()


def run(
    config: GatewayConfig,
    app_factory: Callable[[GatewayConfig], web.Application] | None = None,
    *,
    on_started: Callable[[GatewayServer], None] | None = None,
) -> None:
    """Build the app (inside the loop that serves it) and serve it until a stop signal."""

    async def main() -> None:
        app = (app_factory or create_app)(config)
        await serve(config, app, on_started=on_started)

    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
