"""The whole gateway on a Redis that needs a login: URL + password_env, or a Sentinel.

`create_app` gets no URL override here: it connects the way `redis:` in the config says,
readiness and a grant check go through that connection, the grant watcher subscribes
through it, and a refused login fails closed (a start-up error; 503 and nothing forwarded
when the login is withdrawn while running, back to normal once it is restored).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from gateway.access import AccessStore
from gateway.access.service import ACCESS
from gateway.app import REDIS, STAGES, create_app, runner_kwargs
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, parse_config
from gateway.errors import ConfigError, RedisLoginError
from tests.gateway.access.conftest import ALICE, ORG, SAM, seed_directory
from tests.gateway.access.test_grant_stage import LoggedIn
from tests.gateway.proxyharness import CONSOLE, HOST, GatewayTestServer, Upstream, policy_yaml
from tests.gateway.redis_servers import (
    ACL_PASSWORD,
    ACL_USER,
    MASTER,
    PASSWORD,
    SENTINEL_PASSWORD,
    RedisProcess,
    start_redis,
    start_sentinel,
)

PASSWORD_ENV = "GW_TEST_REDIS_PASSWORD"
SENTINEL_ENV = "GW_TEST_REDIS_SENTINEL_PASSWORD"


def acl_args() -> tuple[str, ...]:
    return ("--requirepass", PASSWORD, "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*")


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path_factory.mktemp("protected"), *acl_args(), "&*", "+@all")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sentinel(
    tmp_path_factory: pytest.TempPathFactory, protected: RedisProcess
) -> Iterator[RedisProcess]:
    server = start_sentinel(
        tmp_path_factory.mktemp("sentinel"), protected.port, master_password=PASSWORD
    )
    yield server
    server.stop()


@pytest.fixture
async def admin(protected: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=protected.port, password=PASSWORD)
    await client.flushall()
    await seed_directory(client)
    yield client
    await client.aclose()


def config_with(tmp_path: Path, upstream_port: int, redis: str) -> GatewayConfig:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(upstream_port))
    return parse_config(
        f"""console_url: https://{CONSOLE}:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{policy}]
redis:
{redis}""",
        "test.yaml",
    )


@dataclass
class Running:
    url: str
    upstream: Upstream
    session: aiohttp.ClientSession
    app_redis: aioredis.Redis

    async def get(self, path: str) -> tuple[int, dict[str, object]]:
        async with self.session.get(self.url + path, headers={"Host": HOST}) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def upstream_running() -> AsyncIterator[tuple[Upstream, TestServer]]:
    upstream = Upstream()
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    upstream.port = server.port
    try:
        yield upstream, server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, redis: str, clock: ManualClock) -> AsyncIterator[Running]:
    async with upstream_running() as (upstream, _):
        config = config_with(tmp_path, upstream.port, redis)
        app = create_app(config, clock=clock)
        stages = app[STAGES]
        stages[:] = [s for s in stages if s.name not in ("session", "mfa")]
        stages.insert(1, LoggedIn(SAM))
        server = GatewayTestServer(app, host="127.0.0.1")
        await server.start_server(**runner_kwargs(config))
        session = aiohttp.ClientSession()
        try:
            watcher = app[ACCESS].watcher
            for _ in range(150):  # the grant watcher subscribes through the same client
                if watcher.healthy:
                    break
                await asyncio.sleep(0.02)
            assert watcher.healthy
            yield Running(f"http://127.0.0.1:{server.port}", upstream, session, app[REDIS])
        finally:
            await session.close()
            await server.close()


async def grant_for_sam(admin: aioredis.Redis, clock: ManualClock) -> str:
    store = AccessStore(admin, clock)
    request = await store.file(
        SAM,
        org=ORG,
        member="bob",
        justification="ticket 7: checkout fails",
        duration_s=600,
        scope="read",
    )
    await store.approve(request.id, ALICE)
    return request.id


async def assert_serves_grants(running: Running, admin: aioredis.Redis, clock: ManualClock) -> None:
    assert await running.get("/.gateway/readyz") == (200, {"status": "ready"})
    status, body = await running.get("/page")
    assert (status, body["error"]) == (403, "no_grant")
    assert running.upstream.received == []
    grant = await grant_for_sam(admin, clock)
    status, body = await running.get("/page")
    assert status == 200
    [seen] = running.upstream.received
    assert seen.header("X-Gateway-Grant") == [grant]
    # the attempt went into the audit stream on the protected server
    assert await admin.xlen("gw:audit:frames") > 0


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ACL_PASSWORD)
    monkeypatch.setenv(SENTINEL_ENV, SENTINEL_PASSWORD)


@pytest.mark.usefixtures("environment")
async def test_acl_user_with_password_from_the_environment(
    tmp_path: Path, protected: RedisProcess, admin: aioredis.Redis, clock: ManualClock
) -> None:
    redis = f"  url: {protected.url}\n  username: {ACL_USER}\n  password_env: {PASSWORD_ENV}\n"
    async with gateway(tmp_path, redis, clock) as running:
        assert await running.app_redis.acl_whoami() == ACL_USER
        await assert_serves_grants(running, admin, clock)


@pytest.mark.usefixtures("environment")
async def test_through_sentinel(
    tmp_path: Path,
    sentinel: RedisProcess,
    protected: RedisProcess,
    admin: aioredis.Redis,
    clock: ManualClock,
) -> None:
    redis = (
        f"  sentinel: {{master: {MASTER}, nodes: ['127.0.0.1:{sentinel.port}']}}\n"
        f"  username: {ACL_USER}\n  password_env: {PASSWORD_ENV}\n"
        f"  sentinel_password_env: {SENTINEL_ENV}\n"
    )
    async with gateway(tmp_path, redis, clock) as running:
        info = await running.app_redis.info("server")
        assert info["tcp_port"] == protected.port
        await assert_serves_grants(running, admin, clock)


async def test_a_wrong_password_stops_start_up(
    tmp_path: Path, protected: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not the password")
    async with upstream_running() as (upstream, _):
        redis = f"  url: {protected.url}\n  username: {ACL_USER}\n  password_env: {PASSWORD_ENV}\n"
        app = create_app(config_with(tmp_path, upstream.port, redis))
        server = GatewayTestServer(app, host="127.0.0.1")
        with pytest.raises(RedisLoginError) as caught:
            await server.start_server()
        await server.close()
        assert f"user {ACL_USER!r} with the password in ${PASSWORD_ENV}" in str(caught.value)
        assert "not the password" not in str(caught.value)
        assert upstream.received == []


async def test_a_sentinel_refusing_its_password_stops_start_up(
    tmp_path: Path, sentinel: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ACL_PASSWORD)
    monkeypatch.setenv(SENTINEL_ENV, "not the sentinel password")
    async with upstream_running() as (upstream, _):
        redis = (
            f"  sentinel: {{master: {MASTER}, nodes: ['127.0.0.1:{sentinel.port}']}}\n"
            f"  username: {ACL_USER}\n  password_env: {PASSWORD_ENV}\n"
            f"  sentinel_password_env: {SENTINEL_ENV}\n"
        )
        app = create_app(config_with(tmp_path, upstream.port, redis))
        server = GatewayTestServer(app, host="127.0.0.1")
        with pytest.raises(RedisLoginError) as caught:
            await asyncio.wait_for(server.start_server(), 30)
        await server.close()
        message = str(caught.value)
        assert f"the password in ${SENTINEL_ENV} (redis.sentinel_password_env)" in message
        assert "not the sentinel password" not in message
        assert upstream.received == []


async def test_a_missing_password_is_a_start_error_not_a_silent_login(
    tmp_path: Path, protected: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    redis = f"  url: {protected.url}\n  password_env: {PASSWORD_ENV}\n"
    with pytest.raises(ConfigError, match=f"environment variable {PASSWORD_ENV} set, not empty"):
        config_with(tmp_path, 1, redis)
    # and a config without any password reaches a server that wants one: refused at start
    app = create_app(config_with(tmp_path, 1, f"  url: {protected.url}\n"))
    server = GatewayTestServer(app, host="127.0.0.1")
    with pytest.raises(RedisLoginError, match="the default user with no password"):
        await server.start_server()
    await server.close()


async def test_a_withdrawn_login_fails_closed_and_recovers(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = start_redis(tmp_path / "own", *acl_args(), "&*", "+@all")
    try:
        admin = aioredis.Redis(port=own.port, password=PASSWORD)
        await seed_directory(admin)
        monkeypatch.setenv(PASSWORD_ENV, ACL_PASSWORD)
        redis = f"  url: {own.url}\n  username: {ACL_USER}\n  password_env: {PASSWORD_ENV}\n"
        async with gateway(tmp_path, redis, clock) as running:
            await grant_for_sam(admin, clock)
            assert (await running.get("/page"))[0] == 200
            # Deleting the user drops its connections; new ones are refused.
            assert await admin.acl_deluser(ACL_USER) == 1
            status, body = await running.get("/.gateway/readyz")
            assert (status, body) == (503, {"status": "unavailable", "redis": "down"})
            status, body = await running.get("/page")
            assert status == 503
            assert len(running.upstream.received) == 1  # nothing more was forwarded
            await admin.acl_setuser(
                ACL_USER,
                enabled=True,
                passwords=[f"+{ACL_PASSWORD}"],
                keys=["*"],
                channels=["*"],
                commands=["+@all"],
            )
            for _ in range(100):
                if (await running.get("/.gateway/readyz"))[0] == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await running.get("/page"))[0] == 200
            assert len(running.upstream.received) == 2
        await admin.aclose()
    finally:
        own.stop()
