"""`misdirected_to`: the one SNI-versus-host check, over real TLS and plain connections.

The console (gateway.app) and the route stage both call it; their 421 answers are tested
end to end in test_console_sni.py and test_proxy_refusals.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import TlsFiles
from gateway.proxy.sni import misdirected_to
from gateway.tls import ensure_demo_tls, server_context


async def judged(request: web.Request) -> web.Response:
    denial = misdirected_to(request, request.query["host"])
    if denial is None:
        return web.json_response(None)
    return web.json_response([denial.status, denial.error, denial.reason])


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    files = TlsFiles(tmp_path / "tls/gw.crt", tmp_path / "tls/gw.key", tmp_path / "tls/ca.crt")
    ensure_demo_tls(files, names=["acme.test", "console.test"])
    app = web.Application()
    app.router.add_get("/", judged)
    tls = TestServer(app, host="127.0.0.1")
    plain = TestServer(app, host="127.0.0.1")
    await tls.start_server(ssl=server_context(files))
    await plain.start_server()
    assert tls.port is not None
    assert plain.port is not None
    try:
        yield tls.port, plain.port
    finally:
        await tls.close()
        await plain.close()


async def verdict(port: int, host: str, *, sni: str | None, tls: bool = True) -> object:
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            url, params={"host": host}, server_hostname=sni if tls else None, ssl=False
        ) as response,
    ):
        assert response.status == 200
        return json.loads(await response.text())


@pytest.mark.parametrize("sni", ["acme.test", "ACME.test", "acme.test."])
async def test_a_connection_opened_for_the_host_passes(servers: tuple[int, int], sni: str) -> None:
    assert await verdict(servers[0], "acme.test", sni=sni) is None


async def test_a_connection_opened_for_another_host_is_421_naming_both(
    servers: tuple[int, int],
) -> None:
    assert await verdict(servers[0], "console.test", sni="acme.test") == [
        421,
        "misdirected_request",
        "This connection was opened for acme.test, not console.test.",
    ]


async def test_without_sni_or_tls_nothing_is_refused(servers: tuple[int, int]) -> None:
    assert await verdict(servers[0], "console.test", sni=None) is None
    assert await verdict(servers[1], "console.test", sni=None, tls=False) is None


async def test_a_near_miss_server_name_is_refused(
    servers: tuple[int, int],
) -> None:
    # A name that is not the host (a near miss, a suffix trick) is refused like any other.
    for sni in ["acme.test.evil", "xacme.test", "evil-acme.test"]:
        answer = await verdict(servers[0], "acme.test", sni=sni)
        assert isinstance(answer, list)
        assert answer[:2] == [421, "misdirected_request"]
