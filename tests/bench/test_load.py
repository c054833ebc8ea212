"""The benchmark's load generators count answers and errors honestly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.load import _python, generate_load, which_tool


@pytest.fixture
async def target() -> AsyncIterator[tuple[int, list[str]]]:
    hosts: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hosts.append(request.host)
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="no")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port, hosts
    await server.close()


async def test_python_generator_counts_answers(target: tuple[int, list[str]]) -> None:
    port, hosts = target
    result = await asyncio.to_thread(
        _python, f"http://127.0.0.1:{port}/ok", "acme.localhost", 4, 1.0
    )
    assert result.tool == "python"
    assert result.errors == 0
    assert result.requests == len(hosts) > 0
    assert set(hosts) == {"acme.localhost"}
    assert result.rps > 0


async def test_python_generator_counts_errors(target: tuple[int, list[str]]) -> None:
    port, _ = target
    result = await asyncio.to_thread(
        _python, f"http://127.0.0.1:{port}/broken", "acme.localhost", 2, 0.5
    )
    assert result.requests > 0
    assert result.errors == result.requests


async def test_the_installed_tool_sets_host_and_counts_errors(
    target: tuple[int, list[str]],
) -> None:
    port, hosts = target
    good = await asyncio.to_thread(
        generate_load,
        f"http://127.0.0.1:{port}/ok",
        host="acme.localhost",
        connections=2,
        duration_s=1,
    )
    bad = await asyncio.to_thread(
        generate_load,
        f"http://127.0.0.1:{port}/broken",
        host="acme.localhost",
        connections=2,
        duration_s=1,
    )
    assert good.tool == bad.tool == which_tool()
    assert good.errors == 0
    assert good.requests > 0
    assert set(hosts) == {"acme.localhost"}
    assert bad.errors > 0
