"""The benchmark's recording proxy: one record accepted by Redis before each forward."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.peers import RECORD, RECORDS_STREAM, SMALL_BODY

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def small(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=SMALL_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/small", small)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    try:
        yield server.port, seen
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def recording_proxy(upstream_port: int, redis_url: str) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.peers",
        "recording-proxy",
        "--upstream-port",
        str(upstream_port),
        "--redis-url",
        redis_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        yield int(line.split()[1])
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def test_each_request_is_recorded_once_before_it_is_answered(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with (
        upstream() as (port, seen),
        recording_proxy(port, redis_url) as proxy,
        aiohttp.ClientSession() as client,
    ):

        async def one() -> bytes:
            async with client.get(f"http://127.0.0.1:{proxy}/small") as response:
                assert response.status == 200
                return await response.read()

        bodies = await asyncio.gather(*(one() for _ in range(40)))
    assert bodies == [SMALL_BODY] * 40
    assert len(seen) == 40
    entries: Any = await redis.xrange(RECORDS_STREAM)
    assert len(entries) == 40  # concurrent records share calls, none is dropped or doubled
    assert all(fields == {b"f": RECORD} for _, fields in entries)


async def test_nothing_is_forwarded_when_redis_refuses_the_record(tmp_path: Path) -> None:
    gone = f"unix://{tmp_path / 'no-redis.sock'}"
    async with (
        upstream() as (port, seen),
        recording_proxy(port, gone) as proxy,
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{proxy}/small") as response,
    ):
        assert response.status == 500
    assert seen == []
