"""Requests the gateway refuses before anything is forwarded, each with a clear body."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from gateway.config import TlsFiles
from gateway.tls import ensure_demo_tls, server_context
from tests.gateway.proxyharness import HOST, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def _ask(gw: Gateway, request: str) -> tuple[int, dict[str, str], bytes]:
    return _split(await gw.raw(request.encode("latin-1")))


def _error(body: bytes) -> str:
    decoded = json.loads(body)
    assert set(decoded) == {"error", "reason", "request_id"}
    assert decoded["reason"]
    return str(decoded["error"])


async def test_unknown_host_is_404(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    status, headers, body = await _ask(
        gw, "GET /x HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n"
    )
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert _error(body) == "unknown_host"
    assert gw.upstream.received == []


async def test_denials_are_html_only_when_asked(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    status, headers, body = await _ask(
        gw,
        "GET /<script> HTTP/1.1\r\nHost: nowhere.test\r\nAccept: text/html,*/*;q=0.8\r\n"
        "Connection: close\r\n\r\n",
    )
    assert status == 404
    assert headers["content-type"].startswith("text/html")
    assert b"<h1>404 Not Found</h1>" in body
    assert b"<script>" not in body


async def test_connect_is_405_with_allow(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    status, headers, body = await _ask(
        gw, f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nConnection: close\r\n\r\n"
    )
    assert status == 405
    assert "GET" in headers["allow"]
    assert "CONNECT" not in headers["allow"]
    assert _error(body) == "method_not_allowed"
    assert gw.upstream.received == []


async def test_absolute_form_only_for_the_routed_host(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    status, _, body = await _ask(
        gw,
        "GET http://example.org/x HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n",
    )
    assert status == 400
    assert _error(body) == "unrouted_authority"
    status, _, body = await _ask(
        gw, f"GET http://example.org/x HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    assert status == 400
    assert _error(body) == "unrouted_authority"
    assert gw.upstream.received == []
    status, _, _ = await _ask(
        gw, f"GET http://{HOST}/abs?q=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert gw.upstream.received[0].raw_path == "/abs?q=1"


async def test_header_over_the_gateway_limit_is_431(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(limits={"max_header_bytes": 2048, "max_headers": 10})
    status, _, body = await _ask(
        gw, f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'a' * 3000}\r\nConnection: close\r\n\r\n"
    )
    assert status == 431
    assert _error(body) == "headers_too_large"
    many = "".join(f"X-H{i}: v\r\n" for i in range(12))
    status, _, body = await _ask(
        gw, f"GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}Connection: close\r\n\r\n"
    )
    assert status == 431
    assert gw.upstream.received == []


async def test_request_line_over_the_limit_is_414(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(limits={"max_request_line_bytes": 512})
    status, _, body = await _ask(
        gw, f"GET /{'a' * 600} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    assert status == 414
    assert _error(body) == "uri_too_long"


@pytest.mark.parametrize(
    "request_text",
    [
        "GET / HTTP/1.1\r\nHost: acme.test\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: acme.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: acme.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: acme.test\r\nHost: other.test\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: acme test\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\nHost: acme.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: acme.test\r\nBad Header: x\r\n\r\n",
        "NOT A REQUEST\r\n\r\n",
    ],
)
async def test_malformed_or_ambiguous_requests_are_400(
    gateway_factory: GatewayFactory, request_text: str
) -> None:
    gw = await gateway_factory()
    status, headers, body = await _ask(gw, request_text)
    assert status == 400, body
    assert headers["content-type"] == "application/json"
    assert _error(body)
    assert gw.upstream.received == []


async def test_only_four_gateway_paths_exist_on_routed_hosts(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    for path in ["/.gateway/jwks.json", "/.gateway/api/v1/me", "/.gateway/", "/.gateway/x/../y"]:
        status, _, body = await _ask(
            gw, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        )
        assert status == 404, path
        assert _error(body) == "not_found"
    status, _, _ = await _ask(
        gw, f"GET /x/../%2egateway/healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert gw.upstream.received == []


async def test_probes_answer_on_any_host(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    for host in [HOST, "10.0.0.1", "unknown.test", "gateway.test"]:
        for probe, expected in [("healthz", "ok"), ("readyz", "ready")]:
            status, _, body = await _ask(
                gw, f"GET /.gateway/{probe} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )
            assert status == 200, (host, probe)
            assert json.loads(body)["status"] == expected


async def test_console_origin_is_not_proxied(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    status, _, body = await _ask(
        gw,
        "GET /.gateway/jwks.json HTTP/1.1\r\nHost: gateway.test:8443\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    assert json.loads(body)["keys"][0]["kid"]
    status, _, _ = await _ask(
        gw, "GET /echo HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
    )
    assert status == 404
    assert gw.upstream.received == []


async def test_sni_and_host_disagreeing_is_421(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    files = TlsFiles(tmp_path / "tls/gw.crt", tmp_path / "tls/gw.key", tmp_path / "tls/ca.crt")
    ensure_demo_tls(files, names=[HOST, "down.test"])
    gw = await gateway_factory(tls=server_context(files))
    url = f"https://127.0.0.1:{gw.server.port}/echo"
    async with aiohttp.ClientSession() as client:
        async with client.get(
            url, headers={"Host": HOST}, server_hostname="down.test", ssl=False
        ) as response:
            assert response.status == 421
            assert (await response.json())["error"] == "misdirected_request"
        async with client.get(
            url, headers={"Host": HOST}, server_hostname=HOST, ssl=False
        ) as response:
            assert response.status == 200
    assert len(gw.upstream.received) == 1
    assert gw.upstream.received[0].header("X-Forwarded-Proto") == ["https"]


async def test_upstream_tls_is_verified_unless_the_route_says_not(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    files = TlsFiles(tmp_path / "up/up.crt", tmp_path / "up/up.key", tmp_path / "up/ca.crt")
    ensure_demo_tls(files, names=["127.0.0.1"])
    gw = await gateway_factory(upstream_tls=server_context(files))
    status, _, body = await _ask(
        gw, f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    assert status == 502  # the demo CA is not trusted by the gateway
    assert _error(body) == "upstream_unavailable"
    gw = await gateway_factory(upstream_tls=server_context(files), verify_upstream_tls="false")
    status, _, _ = await _ask(
        gw, f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert gw.upstream.received[0].header("X-Gateway-User") == ["bob"]
