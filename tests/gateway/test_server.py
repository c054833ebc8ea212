"""The listeners: TLS floor, HSTS on HTTPS only, and the plain listener that only redirects."""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import GatewayConfig, Listener, MetricsListener, TlsFiles, parse_config
from gateway.errors import ConfigError
from gateway.server import HSTS, Bound, GatewayServer, handler_settings
from gateway.tls import ensure_demo_tls

ROUTED = {"acme.localhost", "gateway.localhost"}


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    base = tmp_path / "tls"
    files = TlsFiles(base / "gateway.crt", base / "gateway.key", base / "demo-ca.crt")
    ensure_demo_tls(files)
    return files


@pytest.fixture
def config(tmp_path: Path, tls_files: TlsFiles) -> GatewayConfig:
    text = """
console_url: https://gateway.localhost:8443
data_dir: data
listeners:
  - {address: 127.0.0.1, port: 0, tls: true}
  - {address: 127.0.0.1, port: 0, tls: false}
"""
    return replace(parse_config(text, "test.yaml", base=tmp_path), tls=tls_files)


class Upstream:
    """The application behind the listeners; counts what reached it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(f"{request.method} {request.host} {request.raw_path}")
        return web.Response(text=f"app {request.raw_path}")


@dataclass
class Served:
    server: GatewayServer
    upstream: Upstream
    ready: bool = True

    def __iter__(self) -> Iterator[Any]:
        return iter((self.server, self.upstream))


@pytest.fixture
async def served(config: GatewayConfig) -> AsyncIterator[Served]:
    upstream = Upstream()

    async def readiness() -> bool:
        return state.ready

    server = GatewayServer(
        config, upstream.app, known_host=ROUTED.__contains__, readiness=readiness
    )
    state = Served(server, upstream)
    await server.start()
    yield state
    await server.stop()


def _listener(server: GatewayServer, *, tls: bool) -> Bound:
    return next(b for b in server.bound if b.tls is tls)


def _client_context(tls: TlsFiles, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: on purpose
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = version
            context.maximum_version = version
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="acme.localhost") as tls,
    ):
        return tls.version()


async def test_tls_1_1_is_refused_by_the_server(served: Served, tls_files: TlsFiles) -> None:
    server, _ = served
    port = _listener(server, tls=True).port
    context = _client_context(tls_files, ssl.TLSVersion.TLSv1_1)
    # The server sends a protocol_version alert or, from asyncio's TLS layer, just closes.
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|EOF occurred"):
        await asyncio.to_thread(_handshake, port, context)


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
async def test_tls_1_2_and_1_3_are_accepted(
    served: Served,
    tls_files: TlsFiles,
    version: ssl.TLSVersion,
    name: str,
) -> None:
    server, _ = served
    port = _listener(server, tls=True).port
    context = _client_context(tls_files, version)
    assert await asyncio.to_thread(_handshake, port, context) == name


async def test_https_answers_carry_hsts_and_reach_the_app(
    served: Served, tls_files: TlsFiles
) -> None:
    server, upstream = served
    port = _listener(server, tls=True).port
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            f"https://127.0.0.1:{port}/x?y=1",
            headers={"Host": "acme.localhost"},
            ssl=_client_context(tls_files),
            server_hostname="acme.localhost",
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Strict-Transport-Security"] == HSTS
        assert await response.text() == "app /x?y=1"
    assert upstream.seen == ["GET acme.localhost /x?y=1"]


async def test_https_error_answers_carry_hsts_too(
    tls_files: TlsFiles, config: GatewayConfig
) -> None:
    app = web.Application()  # no routes at all: every answer is the router's 404
    server = GatewayServer(
        replace(config, listeners=(Listener("127.0.0.1", 0, True),)),
        app,
        known_host=ROUTED.__contains__,
    )
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(
                f"https://127.0.0.1:{server.bound[0].port}/nothing",
                ssl=_client_context(tls_files),
                server_hostname="acme.localhost",
            ) as response,
        ):
            assert response.status == 404
            assert response.headers["Strict-Transport-Security"] == HSTS
    finally:
        await server.stop()


async def _plain(
    port: int, method: str, target: str, host: str | None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange, so that the exact target and Host are what is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {target} HTTP/1.1\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    await writer.wait_closed()
    header_block, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, payload


async def test_plain_listener_redirects_routed_hosts_to_https(
    served: Served,
) -> None:
    server, upstream = served
    port = _listener(server, tls=False).port
    https_port = _listener(server, tls=True).port
    for method, target, host in [
        ("GET", "/a/b?c=d&e=%2F", "acme.localhost"),
        ("POST", "/submit", "ACME.localhost:8080"),
        ("DELETE", "/x/../y//z", "gateway.localhost"),
    ]:
        status, headers, _ = await _plain(port, method, target, host, b"secret=1")
        assert status == 308
        assert headers["location"] == f"https://{host.lower().split(':')[0]}:{https_port}{target}"
        assert "strict-transport-security" not in headers
    assert upstream.seen == []


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "127.0.0.1",
        "acme.localhost.evil.example",
        "acme.localhost@evil.example",
        "acme.localhost/evil",
        "[::1]",
        "",
        None,
        "acme.localhost:99999999",
    ],
)
async def test_plain_listener_answers_nothing_else(served: Served, host: str | None) -> None:
    server, upstream = served
    status, headers, _ = await _plain(_listener(server, tls=False).port, "GET", "/", host)
    assert status in (400, 404)
    assert "location" not in headers
    assert "strict-transport-security" not in headers
    assert upstream.seen == []


async def test_plain_listener_never_forwards_gateway_paths_or_absolute_targets(
    served: Served,
) -> None:
    server, upstream = served
    port = _listener(server, tls=False).port
    status, headers, _ = await _plain(port, "GET", "http://evil.example/x", "acme.localhost")
    assert status in (308, 400, 404)
    if status == 308:
        assert headers["location"].startswith("https://acme.localhost:")
    status, _, _ = await _plain(port, "CONNECT", "evil.example:443", "evil.example:443")
    assert status in (400, 404, 405)
    assert upstream.seen == []


async def test_plain_listener_health_answers_on_any_host(
    served: Served,
) -> None:
    port = _listener(served.server, tls=False).port
    status, headers, body = await _plain(port, "GET", "/.gateway/healthz", "10.0.0.7")
    assert (status, body) == (200, b"ok\n")
    assert "strict-transport-security" not in headers
    status, _, _ = await _plain(port, "GET", "/.gateway/readyz", "10.0.0.7")
    assert status == 200
    served.ready = False
    status, _, body = await _plain(port, "GET", "/.gateway/readyz", "10.0.0.7")
    assert (status, body) == (503, b"not ready\n")


async def test_plain_only_config_has_nowhere_to_redirect(config: GatewayConfig) -> None:
    upstream = Upstream()
    server = GatewayServer(
        replace(config, listeners=(Listener("127.0.0.1", 0, False),)),
        upstream.app,
        known_host=ROUTED.__contains__,
    )
    await server.start()
    try:
        status, headers, _ = await _plain(server.bound[0].port, "GET", "/", "acme.localhost")
    finally:
        await server.stop()
    assert status == 404
    assert "location" not in headers
    assert upstream.seen == []


async def test_a_port_in_use_fails_start_before_the_app_starts(config: GatewayConfig) -> None:
    upstream = Upstream()
    started: list[bool] = []

    async def on_startup(app: web.Application) -> None:
        started.append(True)

    upstream.app.on_startup.append(on_startup)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = (Listener("127.0.0.1", free_port, True), Listener("127.0.0.1", port, False))
        server = GatewayServer(
            replace(config, listeners=listeners), upstream.app, known_host=ROUTED.__contains__
        )
        with pytest.raises(OSError, match="in use"):
            await server.start()
    assert started == []  # the app (and its Redis, in the gateway) never started
    assert server.bound == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port), timeout=1).close()


async def test_an_app_that_fails_to_start_leaves_nothing_bound(config: GatewayConfig) -> None:
    upstream = Upstream()

    async def on_startup(app: web.Application) -> None:
        raise RuntimeError("startup failed")

    upstream.app.on_startup.append(on_startup)
    listeners = (Listener("127.0.0.1", 0, True), Listener("127.0.0.1", 0, False))
    server = GatewayServer(
        replace(config, listeners=listeners), upstream.app, known_host=ROUTED.__contains__
    )
    with pytest.raises(RuntimeError, match="startup failed"):
        await server.start()
    assert server.bound == []
    assert server.metrics_bound is None


def test_parser_limits_sit_above_the_gateways_own(config: GatewayConfig) -> None:
    settings = handler_settings(config)
    assert settings["max_field_size"] > config.limits.max_header_bytes
    assert settings["max_headers"] > config.limits.max_headers
    assert settings["max_line_size"] > config.limits.max_request_line_bytes
    assert settings["auto_decompress"] is False
    assert settings["access_log"] is None
    assert "access_log" not in handler_settings(replace(config, access_log=True))


async def test_metrics_listener_serves_prometheus_text_apart(config: GatewayConfig) -> None:
    upstream = Upstream()
    assert config.metrics is None
    plain = GatewayServer(config, upstream.app, known_host=ROUTED.__contains__)
    await plain.start()
    try:
        assert plain.metrics_bound is None  # no metrics listener unless configured
    finally:
        await plain.stop()

    with_metrics = replace(config, metrics=MetricsListener("127.0.0.1", 0))
    server = GatewayServer(with_metrics, upstream.app, known_host=ROUTED.__contains__)
    await server.start()
    try:
        bound = server.metrics_bound
        assert bound is not None
        assert bound.port not in {b.port for b in server.bound}
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{bound.port}/metrics"
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            async with session.get(f"http://127.0.0.1:{bound.port}/") as other:
                assert other.status == 404
        assert "gateway_audit_outcome_lost_total" in text
        assert "gateway_stage_failures_total" in text
        assert upstream.seen == []  # scraping never reached the application
    finally:
        await server.stop()


def test_metrics_key_is_checked(tmp_path: Path) -> None:
    base = """
console_url: https://gateway.localhost:8443
data_dir: data
listeners: [{address: 127.0.0.1, port: 0}]
"""
    loaded = parse_config(base + "metrics: {address: 127.0.0.1, port: 9464}\n", "m.yaml")
    assert loaded.metrics == MetricsListener("127.0.0.1", 9464)
    with pytest.raises(ConfigError) as refused:
        parse_config(base + "metrics: {port: 70000, scheme: http}\n", "m.yaml")
    text = str(refused.value)
    assert "m.yaml:5: metrics.port" in text
    assert "m.yaml:5: metrics.scheme: no such key" in text
