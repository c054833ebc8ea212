"""A Redis that may evict keys is refused: at the gateway's start and at `collect`'s.

Each server is a real redis-server: one with `maxmemory-policy allkeys-lru` (refused, the
error names the setting), one whose ACL user may not run CONFIG and one with CONFIG renamed
away (both used, with a warning), and the embedded server (started with `noeviction`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit.eviction import eviction_refusal
from gateway import keys
from gateway.app import REDIS, create_app
from gateway.embedded_redis import EmbeddedRedis, find_redis_server
from gateway.errors import RedisSettingError
from gateway.redis_client import check_eviction_policy
from tests.gateway.proxyharness import GatewayTestServer
from tests.gateway.redis_servers import ACL_PASSWORD, ACL_USER, RedisProcess, start_redis
from tests.gateway.test_app_redis_login import config_with, upstream_running
from tests.gateway.test_cli_audit_redis import run

VARIABLE = "GW_TEST_EVICTION_PASSWORD"


@pytest.fixture(scope="module")
def evicting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path_factory.mktemp("evicting"), "--maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def no_config_acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis whose ACL user may do anything but CONFIG; it evicts, unknown to that user."""
    server = start_redis(
        tmp_path_factory.mktemp("acl"),
        *("--maxmemory-policy", "volatile-lru"),
        *("--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all", "-config"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def renamed_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path_factory.mktemp("renamed"), "--rename-command", "CONFIG", "")
    yield server
    server.stop()


@pytest.fixture
async def evicting_client(evicting: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=evicting.port)
    await client.flushall()
    yield client
    await client.aclose()


async def test_the_gateway_refuses_to_start_on_an_evicting_redis(
    tmp_path: Path, evicting: RedisProcess, evicting_client: aioredis.Redis
) -> None:
    async with upstream_running() as (upstream, _):
        app = create_app(config_with(tmp_path, upstream.port, f"  url: {evicting.url}\n"))
        server = GatewayTestServer(app, host="127.0.0.1")
        try:
            with pytest.raises(RedisSettingError) as caught:
                await server.start_server()
        finally:
            await server.close()
    message = str(caught.value)
    assert "maxmemory-policy 'allkeys-lru'" in message
    assert "noeviction" in message
    assert await evicting_client.exists(keys.audit_stream()) == 0  # not one frame written
    assert upstream.received == []


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
async def test_every_evicting_policy_is_refused(
    evicting_client: aioredis.Redis, policy: str
) -> None:
    await evicting_client.config_set("maxmemory-policy", policy)
    try:
        with pytest.raises(RedisSettingError, match=f"maxmemory-policy '{policy}'"):
            await check_eviction_policy(evicting_client)
    finally:
        await evicting_client.config_set("maxmemory-policy", "allkeys-lru")


async def test_noeviction_passes(redis: aioredis.Redis) -> None:
    assert await redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert await eviction_refusal(redis) is None
    await check_eviction_policy(redis)


async def test_an_acl_user_without_config_is_warned_about_and_used(
    no_config_acl: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis(port=no_config_acl.port, username=ACL_USER, password=ACL_PASSWORD)
    try:
        with caplog.at_level(logging.WARNING, logger="audit.eviction"):
            await check_eviction_policy(client)
    finally:
        await client.aclose()
    warned = [r.getMessage() for r in caplog.records if r.name == "audit.eviction"]
    assert len(warned) == 1
    assert "cannot read the Redis setting maxmemory-policy" in warned[0]
    assert "NOPERM" in warned[0] or "permission" in warned[0]


async def test_a_renamed_config_command_is_warned_about_and_used(
    renamed_config: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis(port=renamed_config.port)
    try:
        with caplog.at_level(logging.WARNING, logger="audit.eviction"):
            assert await eviction_refusal(client) is None
    finally:
        await client.aclose()
    warned = [r.getMessage() for r in caplog.records if r.name == "audit.eviction"]
    assert len(warned) == 1
    assert "unknown command" in warned[0].lower()


async def test_the_gateway_starts_when_config_is_not_permitted(
    tmp_path: Path,
    no_config_acl: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VARIABLE, ACL_PASSWORD)
    redis = f"  url: {no_config_acl.url}\n  username: {ACL_USER}\n  password_env: {VARIABLE}\n"
    async with upstream_running() as (upstream, _):
        app = create_app(config_with(tmp_path, upstream.port, redis))
        server = GatewayTestServer(app, host="127.0.0.1")
        with caplog.at_level(logging.WARNING, logger="audit.eviction"):
            await server.start_server()
        try:
            assert await app[REDIS].ping() is True
        finally:
            await server.close()
    assert any("maxmemory-policy" in r.getMessage() for r in caplog.records)


def test_the_embedded_server_is_started_with_noeviction(tmp_path: Path) -> None:
    # The real server, through a script that writes down its arguments first: Redis
    # rewrites its own process title, so /proc would not show them.
    argv_file = tmp_path / "argv"
    wrapper = tmp_path / "redis-server"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\nexec {find_redis_server()} "$@"\n'
    )
    wrapper.chmod(0o700)
    server = EmbeddedRedis(tmp_path / "redis", persistent=False, binary=str(wrapper))
    server.start()
    try:
        argv = argv_file.read_text().splitlines()
        # explicit, not the server's default: the gateway never depends on how it was built
        assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(server.socket_path))
            sock.sendall(b"CONFIG GET maxmemory-policy\r\n")
            assert b"noeviction" in sock.recv(200)
    finally:
        server.stop()


async def test_collect_refuses_an_evicting_redis(
    tmp_path: Path, evicting: RedisProcess, evicting_client: aioredis.Redis
) -> None:
    await evicting_client.xadd(keys.audit_stream(), {"f": b"x"})
    segments = tmp_path / "segments"
    code, err = await run(
        "audit", "collect", "--once", "--redis-url", evicting.url,
        "--stream", keys.audit_stream(), "--segment-dir", str(segments),
    )  # fmt: skip
    assert code == 1
    assert "collect: Redis has maxmemory-policy 'allkeys-lru'" in err
    assert not list(segments.glob("*.seg"))
    assert await evicting_client.xlen(keys.audit_stream()) == 1  # nothing taken
    assert await evicting_client.exists(f"{keys.audit_stream()}") == 1
    groups = await evicting_client.xinfo_groups(keys.audit_stream())
    assert groups == []  # not even a consumer group created


async def test_gateway_audit_collect_refuses_an_evicting_redis(
    tmp_path: Path, evicting: RedisProcess, evicting_client: aioredis.Redis
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
redis: {{url: "{evicting.url}"}}
audit: {{segment_dir: {tmp_path / "segments"}}}
"""
    )
    code, err = await run("gateway", "audit", "collect", "--once", "--config", str(config))
    assert code == 1
    assert "maxmemory-policy 'allkeys-lru'" in err
    assert not (tmp_path / "segments").exists() or not list((tmp_path / "segments").iterdir())


async def test_collect_warns_and_works_when_config_is_not_permitted(
    tmp_path: Path, no_config_acl: RedisProcess
) -> None:
    segments = tmp_path / "segments"
    code, err = await run(
        "audit", "collect", "--once", "--redis-url", no_config_acl.url,
        "--redis-username", ACL_USER, "--redis-password-env", VARIABLE,
        "--stream", keys.audit_stream(), "--segment-dir", str(segments),
        env={VARIABLE: ACL_PASSWORD},
    )  # fmt: skip
    assert code == 0, err
    assert "cannot read the Redis setting maxmemory-policy" in err
    assert "collected " in err
    assert sorted(segments.glob("*.seg"))
