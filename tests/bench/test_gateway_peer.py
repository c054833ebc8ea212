"""The benchmark's gateway: the real pipeline with a real approved grant, login stood in."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from audit.frame import decode_frame
from bench.peers import SMALL_BODY
from gateway import keys
from tests.gateway.gateway_process import HOST

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def small(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=SMALL_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/small", small)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port, seen
    await server.close()


@contextlib.asynccontextmanager
async def started_peer(
    tmp_path: Path, redis_url: str, upstream_port: int, *extra: str
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """The peer process on a free port; its stderr lines are in the list once it stopped."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.gateway_peer",
        "--data-dir",
        str(tmp_path / "gateway"),
        "--redis-url",
        redis_url,
        "--upstream-port",
        str(upstream_port),
        *extra,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    logged: list[bytes] = []
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        yield int(line.split()[1]), logged
    finally:
        process.terminate()
        _, errors = await asyncio.wait_for(process.communicate(), 30)
        logged.extend(errors.splitlines())
        assert b"frames accepted" in errors  # the group-commit report the bench prints


@pytest.fixture
async def peer(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, upstream: tuple[int, object]
) -> AsyncIterator[int]:
    async with started_peer(tmp_path, redis_url, upstream[0]) as (port, _):
        yield port


async def test_requests_pass_under_the_real_grant_and_are_audited(
    peer: int, redis: aioredis.Redis, upstream: tuple[int, list[dict[str, str]]]
) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{peer}/small", headers={"Host": HOST}) as response,
    ):
        assert response.status == 200
        assert await response.read() == SMALL_BODY
    [headers] = upstream[1]
    assert headers["X-Gateway-User"] == "bob"
    assert headers["X-Gateway-Actor"] == "sam"
    grant = headers["X-Gateway-Grant"]
    live: Any = await redis.hgetall(keys.live_grant("staff:sam", "acme"))
    assert live[b"id"].decode() == grant  # the grant the upstream saw is the one in Redis
    for _ in range(100):  # the outcome is written after the answer: let it land
        kinds = await _record_kinds(redis)
        if "http.outcome" in kinds:
            break
        await asyncio.sleep(0.02)
    assert kinds.count("http.attempt") == 1
    assert kinds.count("http.outcome") == 1


async def _record_kinds(redis: aioredis.Redis) -> list[str]:
    entries: Any = await redis.xrange(keys.audit_stream())
    return [str(decode_frame(bytes(f[b"f"])).decode_body()["record"]) for _, f in entries]


async def test_an_unrouted_host_is_not_forwarded(
    peer: int, upstream: tuple[int, list[dict[str, str]]]
) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{peer}/small", headers={"Host": "other.localhost"}) as r,
    ):
        assert r.status == 404
    assert upstream[1] == []


async def test_the_diagnostic_peer_without_audit_forwards_and_records_nothing(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, upstream: tuple[int, list[Any]]
) -> None:
    async with started_peer(tmp_path, redis_url, upstream[0], "--without-audit") as (
        port,
        logged,
    ):
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/small", headers={"Host": HOST}) as response,
        ):
            assert response.status == 200
            assert await response.read() == SMALL_BODY
        assert len(upstream[1]) == 1
    assert not [kind for kind in await _record_kinds(redis) if kind.startswith("http.")]
    # The stand-in marks each outcome handled: no flow is logged as a lost outcome.
    assert not [line for line in logged if b"AUDIT OUTCOME LOST" in line]
