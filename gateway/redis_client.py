"""How the gateway connects to Redis: one client built from the config's `redis` section.

    client = redis_client(config.redis)                     # redis.url or redis.sentinel
    client = redis_client(config.redis, url=embedded.url)   # this URL instead
    ...
    await check_login(client, config.redis)                 # RedisLoginError if refused
                                                            # (by Redis or the sentinels)
    await check_eviction_policy(client)                     # RedisSettingError if it may
                                                            # evict keys
    await client.aclose()                                   # sentinel connections too

The URL chooses the transport (`redis://`, `rediss://`, `unix://`); the username and the
password come from `redis.username` and the environment variable `redis.password_env`
names (read at config load). `rediss://` always verifies the server's certificate and
host name, against `redis.ca_file` when set, else the system's trust store; with
`client_cert_file`/`client_key_file` the gateway proves itself too (mutual TLS). A URL's
query never weakens this: its TLS options are dropped and the gateway's applied last.

With `redis.sentinel`, the sentinels are asked for the master's address whenever a
connection is made, so a failover is followed; the data connections use the same
username, password and TLS as a URL would, the sentinels `sentinel_password_env`.
Pub/sub (the grant watcher) goes through the same client, hence the same master.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
)

from audit.eviction import eviction_refusal
from gateway.config import RedisConfig, RedisSentinel
from gateway.errors import RedisLoginError, RedisSettingError

log = logging.getLogger(__name__)

_REFUSED = (AuthenticationError, AuthorizationError, NoPermissionError)
# A connection attempt the network drops silently (a firewall, a dead host) fails after
# this long instead of the kernel's minutes of SYN retries, so the listeners reconnect and
# the re-checks that bound missed events run. Set here: older redis-py versions leave it
# unbounded. A URL's `socket_connect_timeout` overrides it.
CONNECT_TIMEOUT_S = 5.0


class SentinelRedis(aioredis.Redis):
    """A client of the master a Sentinel names; closing it closes the sentinel links too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            for node in self.sentinels.sentinels:
                await node.aclose()


def redis_client(settings: RedisConfig, *, url: str | None = None) -> aioredis.Redis:
    """A client for `url` (or `settings.url`, or `settings.sentinel`) with `settings`' login.

    Raises ValueError when nothing names a Redis (the embedded server's URL must be given)
    or the URL is malformed.
    """
    target = url or settings.url
    if target is None:
        if settings.sentinel is None:
            raise ValueError("no Redis to connect to: give the embedded server's URL")
        return _through_sentinel(settings, settings.sentinel)
    # SECURITY: a URL's TLS options are dropped and the gateway's applied last, so that a
    # query such as `?ssl_check_hostname=false` cannot turn verification off.
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        **{k: v for k, v in parse_url(target).items() if not k.startswith("ssl")},
    }
    tls = target.startswith("rediss://")
    options.update(_login(settings.username, settings.password))
    if tls:
        options.update(_tls_options(settings))
    return aioredis.Redis.from_pool(ConnectionPool(**options))


def _login(username: str | None, password: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if username is not None:
        out["username"] = username
    if password is not None:
        out["password"] = password
    return out


def _tls_options(settings: RedisConfig) -> dict[str, Any]:
    return {
        # SECURITY: the server's certificate and host name are always verified.
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_ca_certs": str(settings.ca_file) if settings.ca_file else None,
        "ssl_certfile": str(settings.client_cert_file) if settings.client_cert_file else None,
        "ssl_keyfile": str(settings.client_key_file) if settings.client_key_file else None,
    }


def _through_sentinel(settings: RedisConfig, sentinel: RedisSentinel) -> aioredis.Redis:
    tls: dict[str, Any] = {"ssl": True, **_tls_options(settings)} if sentinel.tls else {}
    connect = {"socket_connect_timeout": CONNECT_TIMEOUT_S}
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(sentinel.nodes),
        sentinel_kwargs={**_login(None, settings.sentinel_password), **tls, **connect},
        **_login(settings.username, settings.password),
        **tls,
        **connect,
    )
    client: SentinelRedis = sentinels.master_for(sentinel.master, redis_class=SentinelRedis)
    client.sentinels = sentinels
    return client


async def check_login(client: aioredis.Redis, settings: RedisConfig) -> None:
    """Raise RedisLoginError when Redis (or every Sentinel that answers) refuses the login;
    an unreachable Redis is left to the callers' fail-closed handling (it may come back,
    a wrong password will not)."""
    sentinels = client.sentinels if isinstance(client, SentinelRedis) else None
    if sentinels is not None and not await _sentinels_accept(sentinels, settings):
        return  # none answers now: every check fails closed until one does
    try:
        await client.ping()
    except _REFUSED as exc:
        raise RedisLoginError(_login_refused(settings, exc)) from exc
    except (RedisError, OSError):
        return  # unreachable now: every check fails closed until it answers


async def check_eviction_policy(client: aioredis.Redis) -> None:
    """Raise RedisSettingError when Redis's `maxmemory-policy` is not `noeviction`.

    A Redis that does not let the gateway read it (ACL user without CONFIG, a renamed
    command) is logged as a warning and used; an unreachable one is left to the callers'
    fail-closed handling, as in check_login, and asked again by readyz once it answers
    (gateway.readiness).
    """
    try:
        refusal = await eviction_refusal(client)
    except (RedisError, OSError):
        return  # unreachable now: every check fails closed until it answers
    if refusal is not None:
        raise RedisSettingError(refusal)


async def _sentinels_accept(sentinels: Sentinel, settings: RedisConfig) -> bool:
    """Whether a sentinel accepted the login; RedisLoginError when all that answer refuse.

    redis-py folds a sentinel's refusal into "No master found" (a ConnectionError, retried
    as if the sentinel were down), so each one is asked directly, once, without retries.
    """
    answers = await asyncio.gather(*(_probe(node) for node in sentinels.sentinels))
    refused = [answer for answer in answers if answer is not None and answer != _ACCEPTED]
    accepted = _ACCEPTED in answers
    if refused and not accepted:
        source = (
            f"the password in ${settings.sentinel_password_env}"
            if settings.sentinel_password_env
            else "no password"
        )
        raise RedisLoginError(
            f"Redis Sentinel refused the login with {source} (redis.sentinel_password_env): "
            + "; ".join(refused)
        )
    if refused:
        log.warning("some Redis Sentinels refused the login: %s", "; ".join(refused))
    return accepted


_ACCEPTED = "accepted"
SENTINEL_PROBE_TIMEOUT_S = 5.0


async def _probe(node: aioredis.Redis) -> str | None:
    """_ACCEPTED, "host:port: why" when the sentinel refused the login, None when down."""
    pool = node.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
    connection = pool.connection_class(**kwargs)
    try:
        async with asyncio.timeout(SENTINEL_PROBE_TIMEOUT_S):  # a silent one is down
            await connection.connect()  # type: ignore[no-untyped-call]  # AUTH happens here
            await connection.send_command("PING")
            await connection.read_response()
    except _REFUSED as exc:
        return f"{kwargs.get('host')}:{kwargs.get('port')}: {exc}"
    except (RedisError, OSError, TimeoutError):
        return None
    finally:
        await connection.disconnect()
    return _ACCEPTED


def _login_refused(settings: RedisConfig, exc: Exception) -> str:
    who = f"user {settings.username!r}" if settings.username else "the default user"
    source = f"the password in ${settings.password_env}" if settings.password_env else "no password"
    return f"Redis refused the login of {who} with {source} (redis.password_env): {exc}"
