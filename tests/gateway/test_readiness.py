"""readyz refuses an evicting Redis found after start-up, not only one found at start-up.

Real redis-servers on free loopback ports: one that only appears (evicting) after the
gateway has started without it, as after a failover, and one switched to an evicting
policy while the gateway runs. Proxied requests never ask Redis for its settings.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.app import create_app
from gateway.appkeys import REDIS_READINESS
from gateway.embedded_redis import find_redis_server
from tests.gateway.proxyharness import HOST, GatewayTestServer
from tests.gateway.redis_servers import RedisProcess, free_port, start_redis
from tests.gateway.test_app_redis_login import config_with, upstream_running


def spawn(port: int, directory: Path, policy: str) -> RedisProcess:
    """A redis-server on `port` (a replacement takes the same address, as after a failover)."""
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--maxmemory-policy", policy],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return RedisProcess(port, process)


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/.gateway/readyz", headers={"Host": HOST}) as got,
    ):
        return got.status, await got.json()


async def until_not_down(port: int) -> tuple[int, dict[str, object]]:
    deadline = time.monotonic() + 60  # generous: a loaded machine lags
    while time.monotonic() < deadline:
        status, body = await readyz(port)
        if body.get("redis") != "down":
            return status, body
        await asyncio.sleep(0.05)
    raise AssertionError("readyz kept reporting Redis down")


def is_readiness_error(record: logging.LogRecord) -> bool:
    return record.name == "gateway.readiness" and record.levelno >= logging.ERROR


async def until_answers(port: int) -> None:
    client = aioredis.Redis(port=port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if await client.ping():
                    return
            except (RedisError, OSError):
                await asyncio.sleep(0.02)
        raise AssertionError(f"no redis-server answered on port {port}")
    finally:
        await client.aclose()


async def test_an_evicting_redis_found_after_an_outage_makes_readyz_503_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The Redis behind the URL is replaced while the gateway runs (a failover to a
    # differently configured server): readyz asks again as soon as Redis answers again.
    port = free_port()
    first = await asyncio.to_thread(spawn, port, tmp_path / "first", "noeviction")
    replacement: RedisProcess | None = None
    client = aioredis.Redis(port=port)
    try:
        await until_answers(port)
        async with upstream_running() as (upstream, _):
            config = config_with(tmp_path, upstream.port, f"  url: redis://127.0.0.1:{port}/0\n")
            gateway = GatewayTestServer(create_app(config), host="127.0.0.1")
            await gateway.start_server()
            assert gateway.port is not None
            try:
                assert await readyz(gateway.port) == (200, {"status": "ready"})
                await asyncio.to_thread(first.stop)
                assert await readyz(gateway.port) == (
                    503,
                    {"status": "unavailable", "redis": "down"},
                )
                replacement = await asyncio.to_thread(
                    spawn, port, tmp_path / "second", "allkeys-lru"
                )
                with caplog.at_level(logging.ERROR, logger="gateway.readiness"):
                    status, body = await until_not_down(gateway.port)
                assert status == 503
                assert body["status"] == "unavailable"
                assert body["redis"] == "evicting"
                assert "maxmemory-policy 'allkeys-lru'" in str(body["reason"])
                errors = [r.getMessage() for r in caplog.records if is_readiness_error(r)]
                assert len(errors) == 1
                assert "allkeys-lru" in errors[0]
                assert (await readyz(gateway.port))[0] == 503  # still refused, not logged again
                assert len([r for r in caplog.records if is_readiness_error(r)]) == 1
                # Fixed, it is seen at the next probe: a refused Redis is asked every time.
                await client.config_set("maxmemory-policy", "noeviction")
                assert await readyz(gateway.port) == (200, {"status": "ready"})
            finally:
                await gateway.close()
    finally:
        await client.aclose()
        await asyncio.to_thread(first.stop)
        if replacement is not None:
            await asyncio.to_thread(replacement.stop)


async def test_a_redis_that_starts_evicting_later_is_found_at_the_periodic_check(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path / "redis")
    client = aioredis.Redis(port=server.port)
    try:
        async with upstream_running() as (upstream, _):
            app = create_app(config_with(tmp_path, upstream.port, f"  url: {server.url}\n"))
            gateway = GatewayTestServer(app, host="127.0.0.1")
            await gateway.start_server()
            assert gateway.port is not None
            try:
                assert await readyz(gateway.port) == (200, {"status": "ready"})
                await client.config_set("maxmemory-policy", "volatile-lru")
                configs = await config_calls(client)
                # Between periodic checks neither readyz nor proxied requests ask again.
                assert await readyz(gateway.port) == (200, {"status": "ready"})
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        f"http://127.0.0.1:{gateway.port}/page",
                        headers={"Host": HOST},
                        allow_redirects=False,
                    ) as got,
                ):
                    assert got.status in (302, 401, 403)
                assert await config_calls(client) == configs
                app[REDIS_READINESS].recheck_s = 0.0  # the period has passed
                status, body = await readyz(gateway.port)
                assert status == 503
                assert body["redis"] == "evicting"
                assert "'volatile-lru'" in str(body["reason"])
            finally:
                await gateway.close()
    finally:
        await client.aclose()
        server.stop()


async def config_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_config", {})
    return int(entry.get("calls", 0)) if isinstance(entry, dict) else 0
