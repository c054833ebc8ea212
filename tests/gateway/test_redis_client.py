"""`gateway.redis_client` against real servers: a password, an ACL user, TLS, a Sentinel."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import RedisConfig, RedisSentinel
from gateway.errors import RedisLoginError
from gateway.redis_client import CONNECT_TIMEOUT_S, check_login, redis_client
from tests.gateway.redis_servers import (
    ACL_PASSWORD,
    ACL_USER,
    MASTER,
    PASSWORD,
    SENTINEL_PASSWORD,
    Pki,
    RedisProcess,
    TlsFront,
    make_pki,
    start_redis,
    start_sentinel,
)


def protected_args() -> tuple[str, ...]:
    """A default user with a password and an ACL user of the gateway's own."""
    return ("--requirepass", PASSWORD, "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*")


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path_factory.mktemp("protected"), *protected_args(), "+@all")
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def admin(protected: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A direct client of the protected server, to see what the gateway's client did."""
    client = aioredis.Redis(port=protected.port, password=PASSWORD)
    await client.flushall()
    yield client
    await client.aclose()


async def roundtrip(client: aioredis.Redis, admin: aioredis.Redis, key: str) -> None:
    try:
        await client.set(key, "through the gateway's client")
    finally:
        await client.aclose()
    assert await admin.get(key) == b"through the gateway's client"


async def test_password_from_the_environment(
    protected: RedisProcess, admin: aioredis.Redis
) -> None:
    client = redis_client(RedisConfig(url=protected.url, password_env="X", password=PASSWORD))
    await roundtrip(client, admin, "k:password")


async def test_acl_user(protected: RedisProcess, admin: aioredis.Redis) -> None:
    settings = RedisConfig(url=protected.url, username=ACL_USER, password=ACL_PASSWORD)
    client = redis_client(settings)
    try:
        assert await client.acl_whoami() == ACL_USER
    finally:
        await client.aclose()
    await roundtrip(redis_client(settings), admin, "k:acl")


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        (RedisConfig(url="redis://127.0.0.1:1/0"), "the default user with no password"),
        (
            RedisConfig(url="redis://127.0.0.1:1/0", password_env="GW_PW", password="wrong"),
            "the default user with the password in $GW_PW",
        ),
        (
            RedisConfig(
                url="redis://127.0.0.1:1/0", username=ACL_USER, password_env="P", password="x"
            ),
            f"user {ACL_USER!r} with the password in $P",
        ),
    ],
)
async def test_a_refused_login_is_a_clear_error(
    protected: RedisProcess, settings: RedisConfig, shown: str
) -> None:
    client = redis_client(settings, url=protected.url)
    try:
        with pytest.raises(RedisLoginError) as caught:
            await check_login(client, settings)
    finally:
        await client.aclose()
    message = str(caught.value)
    assert message.startswith(f"Redis refused the login of {shown} (redis.password_env)")
    assert "wrong" not in message.partition("(redis.password_env)")[0]


async def test_an_unreachable_redis_is_not_a_login_error(protected: RedisProcess) -> None:
    # Down is not refused: callers fail closed and recover when it answers again.
    settings = RedisConfig(url="redis://127.0.0.1:1/0", password="x")
    client = redis_client(settings)
    try:
        await check_login(client, settings)
        with pytest.raises(RedisConnectionError):
            await client.ping()
    finally:
        await client.aclose()


@pytest.fixture
def silent_address() -> Iterator[int]:
    """A port whose connection attempts hang: its listen queue is full, so the kernel drops
    further SYNs, as a firewall that drops packets does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    queued = []
    for _ in range(4):
        attempt = socket.socket()
        attempt.setblocking(False)
        attempt.connect_ex(("127.0.0.1", port))
        queued.append(attempt)
    try:
        yield port
    finally:
        for attempt in queued:
            attempt.close()
        listener.close()


async def test_a_connection_the_network_drops_fails_in_bounded_time(silent_address: int) -> None:
    # Without a bound a connect waits out the kernel's SYN retries (about two minutes),
    # holding the listeners' reconnects and re-checks that long.
    client = redis_client(RedisConfig(url=f"redis://127.0.0.1:{silent_address}/0"))
    # The gateway's own bound, whatever redis-py's default is.
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT_S
    started = time.monotonic()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S + 20):
            with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                await client.ping()
    finally:
        await client.aclose()
    assert time.monotonic() - started >= CONNECT_TIMEOUT_S - 0.5  # the bound, not a refusal


def test_no_redis_named_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="embedded"):
        redis_client(RedisConfig())


# --- TLS ----------------------------------------------------------------------------------
@pytest.fixture
async def tls_front(pki: Pki, protected: RedisProcess) -> AsyncIterator[TlsFront]:
    front = TlsFront(pki, protected.port, require_client_cert=False)
    await front.start()
    yield front
    await front.close()


@pytest.fixture
async def mtls_front(pki: Pki, protected: RedisProcess) -> AsyncIterator[TlsFront]:
    front = TlsFront(pki, protected.port, require_client_cert=True)
    await front.start()
    yield front
    await front.close()


async def test_tls_with_a_private_ca(tls_front: TlsFront, pki: Pki, admin: aioredis.Redis) -> None:
    settings = RedisConfig(url=tls_front.url, password=PASSWORD, ca_file=pki.ca)
    await roundtrip(redis_client(settings), admin, "k:tls")
    assert tls_front.handshakes >= 1


@pytest.mark.parametrize(
    "url_options",
    ["", "?ssl_cert_reqs=none", "?ssl_check_hostname=false&ssl_cert_reqs=optional"],
)
async def test_an_untrusted_certificate_is_refused_whatever_the_url_says(
    tls_front: TlsFront, pki: Pki, url_options: str
) -> None:
    # The server's CA is not the one trusted; options in the URL cannot switch checks off.
    for ca_file in (pki.other_ca, None):
        settings = RedisConfig(password=PASSWORD, ca_file=ca_file)
        client = redis_client(settings, url=tls_front.url + url_options)
        try:
            with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.ping()
        finally:
            await client.aclose()
    assert tls_front.handshakes == 0


async def test_the_host_name_is_verified(tls_front: TlsFront, pki: Pki) -> None:
    # The certificate names 127.0.0.1 only: "localhost" reaches the same server but fails.
    settings = RedisConfig(password=PASSWORD, ca_file=pki.ca)
    client = redis_client(settings, url=f"rediss://localhost:{tls_front.port}/0")
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()
    assert tls_front.handshakes == 0


async def test_mutual_tls(mtls_front: TlsFront, pki: Pki, admin: aioredis.Redis) -> None:
    without = redis_client(RedisConfig(url=mtls_front.url, password=PASSWORD, ca_file=pki.ca))
    try:
        with pytest.raises(RedisConnectionError):
            await without.ping()
    finally:
        await without.aclose()
    assert mtls_front.client_subjects == []
    settings = RedisConfig(
        url=mtls_front.url,
        password=PASSWORD,
        ca_file=pki.ca,
        client_cert_file=pki.client_cert,
        client_key_file=pki.client_key,
    )
    await roundtrip(redis_client(settings), admin, "k:mtls")
    assert mtls_front.client_subjects
    assert all("gateway client" in s for s in mtls_front.client_subjects)


# --- Sentinel -----------------------------------------------------------------------------
def through_sentinel(sentinel: RedisProcess) -> RedisConfig:
    return RedisConfig(
        sentinel=RedisSentinel(MASTER, (("127.0.0.1", sentinel.port),)),
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    )


async def test_sentinel_names_the_master(sentinel: RedisProcess, admin: aioredis.Redis) -> None:
    client = redis_client(through_sentinel(sentinel))
    try:
        assert (await client.info("server"))["tcp_port"] == (await admin.info("server"))["tcp_port"]
    finally:
        await client.aclose()
    await roundtrip(redis_client(through_sentinel(sentinel)), admin, "k:sentinel")


async def test_pubsub_through_sentinel(sentinel: RedisProcess, admin: aioredis.Redis) -> None:
    client = redis_client(through_sentinel(sentinel))
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("gw:test:events")
        first = await pubsub.get_message(timeout=2)
        assert first is not None
        assert first["type"] == "subscribe"
        assert await admin.publish("gw:test:events", "revoked") == 1
        message = None
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                break
        assert message is not None
        assert message["data"] == b"revoked"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_sentinel_refusing_its_password_finds_no_master(sentinel: RedisProcess) -> None:
    settings = RedisConfig(
        sentinel=RedisSentinel(MASTER, (("127.0.0.1", sentinel.port),)),
        password=PASSWORD,
        sentinel_password="not the sentinel password",
    )
    client = redis_client(settings)
    try:
        with pytest.raises(RedisConnectionError, match="No master found"):
            # redis-py retries with back-off before it gives up (seconds on a busy machine):
            # the bound only keeps a hang from stalling the suite.
            await asyncio.wait_for(client.ping(), 60)
    finally:
        await client.aclose()


async def test_master_refusing_the_password_through_sentinel(sentinel: RedisProcess) -> None:
    settings = RedisConfig(
        sentinel=RedisSentinel(MASTER, (("127.0.0.1", sentinel.port),)),
        password_env="GW_PW",
        password="wrong",
        sentinel_password=SENTINEL_PASSWORD,
    )
    client = redis_client(settings)
    try:
        with pytest.raises(RedisLoginError, match=r"\$GW_PW"):
            await check_login(client, settings)
    finally:
        await client.aclose()


async def test_acl_user_through_sentinel(sentinel: RedisProcess) -> None:
    settings = RedisConfig(
        sentinel=RedisSentinel(MASTER, (("127.0.0.1", sentinel.port),)),
        username=ACL_USER,
        password=ACL_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    )
    client = redis_client(settings)
    try:
        assert await client.acl_whoami() == ACL_USER
    finally:
        await client.aclose()


async def test_tls_to_the_sentinels_and_the_master(
    tmp_path: Path, pki: Pki, protected: RedisProcess, admin: aioredis.Redis
) -> None:
    # TLS fronts for both: the sentinel names the master's TLS front as its address.
    master_front = TlsFront(pki, protected.port, require_client_cert=True)
    await master_front.start()
    watcher = start_sentinel(tmp_path / "s", master_front.port, master_password=PASSWORD)
    sentinel_front = TlsFront(pki, watcher.port, require_client_cert=True)
    await sentinel_front.start()
    try:
        settings = RedisConfig(
            sentinel=RedisSentinel(MASTER, (("127.0.0.1", sentinel_front.port),), tls=True),
            password=PASSWORD,
            sentinel_password=SENTINEL_PASSWORD,
            ca_file=pki.ca,
            client_cert_file=pki.client_cert,
            client_key_file=pki.client_key,
        )
        checked = redis_client(settings)
        try:  # the sentinels' login is probed over TLS too
            await check_login(checked, settings)
        finally:
            await checked.aclose()
        await roundtrip(redis_client(settings), admin, "k:sentinel-tls")
        wrong = redis_client(replace(settings, sentinel_password="wrong"))
        try:
            with pytest.raises(RedisLoginError, match="Redis Sentinel refused"):
                await check_login(wrong, replace(settings, sentinel_password="wrong"))
        finally:
            await wrong.aclose()
        assert sentinel_front.client_subjects
        assert master_front.client_subjects
        untrusted = replace(settings, ca_file=pki.other_ca)
        client = redis_client(untrusted)
        try:
            with pytest.raises(RedisConnectionError):
                await client.ping()
        finally:
            await client.aclose()
    finally:
        await sentinel_front.close()
        watcher.stop()
        await master_front.close()


def sentinel_settings(
    *ports: int, sentinel_password: str | None, password: str = PASSWORD
) -> RedisConfig:
    return RedisConfig(
        sentinel=RedisSentinel(MASTER, tuple(("127.0.0.1", port) for port in ports)),
        password_env="GW_PW",
        password=password,
        sentinel_password_env="GW_SENTINEL_PW" if sentinel_password is not None else None,
        sentinel_password=sentinel_password,
    )


@pytest.mark.parametrize(
    ("sentinel_password", "shown"),
    [
        ("not the sentinel password", "the password in $GW_SENTINEL_PW"),
        (None, "no password"),
    ],
)
async def test_a_sentinel_refusing_the_login_is_a_clear_start_up_error(
    sentinel: RedisProcess, sentinel_password: str | None, shown: str
) -> None:
    # Not "No master found" after retries, nor a readiness 503 for ever: a wrong
    # sentinel password will not heal by itself.
    settings = sentinel_settings(sentinel.port, sentinel_password=sentinel_password)
    client = redis_client(settings)
    try:
        with pytest.raises(RedisLoginError) as caught:
            await asyncio.wait_for(check_login(client, settings), 30)
    finally:
        await client.aclose()
    message = str(caught.value)
    assert f"127.0.0.1:{sentinel.port}" in message
    assert f"with {shown} (redis.sentinel_password_env)" in message
    assert "not the sentinel password" not in message


async def test_an_unreachable_sentinel_beside_a_refusing_one_is_still_a_login_error(
    sentinel: RedisProcess,
) -> None:
    settings = sentinel_settings(1, sentinel.port, sentinel_password="wrong")
    client = redis_client(settings)
    try:
        with pytest.raises(RedisLoginError, match=r"\$GW_SENTINEL_PW"):
            await asyncio.wait_for(check_login(client, settings), 30)
    finally:
        await client.aclose()


async def test_sentinels_that_are_all_down_are_not_a_login_error(sentinel: RedisProcess) -> None:
    # Down is not refused: the gateway starts and fails closed until they answer.
    settings = sentinel_settings(1, sentinel_password=SENTINEL_PASSWORD)
    client = redis_client(settings)
    try:
        await asyncio.wait_for(check_login(client, settings), 30)
    finally:
        await client.aclose()


async def test_one_accepting_sentinel_is_enough(sentinel: RedisProcess) -> None:
    settings = sentinel_settings(sentinel.port, 1, sentinel_password=SENTINEL_PASSWORD)
    client = redis_client(settings)
    try:
        await asyncio.wait_for(check_login(client, settings), 30)
        assert await client.ping()
    finally:
        await client.aclose()
