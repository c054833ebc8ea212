"""The console origin answers 421 when the TLS server name (SNI) names another host.

Over real TLS: a connection opened for a routed host must not carry requests for the
console (its login, its API, its keys), just as a connection opened for one routed host
must not carry another's. Without SNI (a client connecting by address) nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from gateway.config import TlsFiles
from gateway.tls import ensure_demo_tls, server_context
from tests.gateway.proxyharness import CONSOLE, HOST, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]


@pytest.fixture
async def gw(gateway_factory: GatewayFactory, tmp_path: Path) -> Gateway:
    files = TlsFiles(tmp_path / "tls/gw.crt", tmp_path / "tls/gw.key", tmp_path / "tls/ca.crt")
    ensure_demo_tls(files, names=[HOST, CONSOLE, "other.test"])
    return await gateway_factory(tls=server_context(files))


async def ask(
    gw: Gateway, path: str, host: str, sni: str | None, method: str = "GET"
) -> tuple[int, dict[str, object] | None]:
    url = f"https://127.0.0.1:{gw.server.port}{path}"
    async with (
        aiohttp.ClientSession() as client,
        client.request(
            method,
            url,
            headers={"Host": host, "Accept": "application/json"},
            server_hostname=sni,
            ssl=False,
            allow_redirects=False,
        ) as response,
    ):
        text = await response.text()
        body = json.loads(text) if text.startswith("{") else None
        return response.status, body


@pytest.mark.parametrize(
    "path", ["/.gateway/jwks.json", "/.gateway/api/v1/me", "/.gateway/no-such-page", "/"]
)
@pytest.mark.parametrize("sni", [HOST, "other.test"])
async def test_console_requests_on_a_connection_for_another_host_are_421(
    gw: Gateway, path: str, sni: str
) -> None:
    status, body = await ask(gw, path, CONSOLE, sni)
    assert status == 421
    assert body is not None
    assert body["error"] == "misdirected_request"
    assert body["reason"] == f"This connection was opened for {sni}, not {CONSOLE}."
    assert gw.upstream.received == []


async def test_a_console_post_on_a_routed_connection_is_421(gw: Gateway) -> None:
    status, body = await ask(gw, "/.gateway/api/v1/login", CONSOLE, HOST, method="POST")
    assert status == 421
    assert body is not None
    assert body["error"] == "misdirected_request"


async def test_the_console_answers_on_its_own_connection(gw: Gateway) -> None:
    status, body = await ask(gw, "/.gateway/jwks.json", CONSOLE, CONSOLE)
    assert status == 200
    assert body is not None
    assert "keys" in body
    # Host is case-insensitive and may carry the port
    port = gw.server.port
    status, _ = await ask(gw, "/.gateway/jwks.json", f"Gateway.Test:{port}", CONSOLE)
    assert status == 200
    status, _ = await ask(gw, "/.gateway/jwks.json", CONSOLE, CONSOLE.upper())
    assert status == 200


async def test_without_sni_the_console_answers(gw: Gateway) -> None:
    status, body = await ask(gw, "/.gateway/jwks.json", CONSOLE, None)  # by address: no SNI
    assert status == 200
    assert body is not None
    assert "keys" in body


async def test_probes_answer_whatever_the_server_name(gw: Gateway) -> None:
    # Load balancers probe by address; a probe reveals nothing and changes nothing.
    status, body = await ask(gw, "/.gateway/healthz", CONSOLE, HOST)
    assert (status, body) == (200, {"status": "ok"})


async def test_routed_hosts_still_refuse_a_console_connection(gw: Gateway) -> None:
    status, body = await ask(gw, "/echo", HOST, CONSOLE)
    assert status == 421
    assert body is not None
    assert body["error"] == "misdirected_request"
    assert gw.upstream.received == []
