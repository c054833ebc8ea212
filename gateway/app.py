"""The application factory: one aiohttp app serving the console origin and every routed host.

    app = create_app(config)                       # or create_app(config, clock=, redis_url=)
    runner = web.AppRunner(app, **runner_kwargs(config))

Requests whose Host is `config.console_host` go to the console sub-application (login,
console pages, JSON API, `/.gateway/jwks.json`; 421 when the connection's TLS server name
is another host's, as on routed hosts); every other Host is a routed host:
`/.gateway/healthz` and `/.gateway/readyz` answer on any Host, everything else goes
through the pipeline (`gateway.pipeline`), which answers `/.gateway/auth` and
`/.gateway/logout` itself and 404s every other `/.gateway/*` path.

Resources (Redis through `gateway.redis_client`, or an embedded redis-server when
neither `redis.url` nor `redis.sentinel` is configured; the policy store; the comparison
of the shared secret keys with the other instances', `gateway.key_agreement`; the audit
writer; the one upstream client session with keep-alive) are opened in `cleanup_ctx`
generators, in that order, and closed in reverse. aiohttp's header parser
limits are set above `config.limits` so that the gateway itself answers 414/431.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

import gateway.api
import gateway.console
import gateway.sessions.routed
from audit.keys import KeyDirectory
from audit.record import event_record
from audit.redact import Redactor
from audit.writer import AuditWriter
from gateway import keys
from gateway.access.service import access_ctx
from gateway.accounts.keyfile import create_once
from gateway.appkeys import (
    ASSERTION_SIGNER,
    AUDIT,
    CLOCK,
    CONFIG,
    CONSOLE_APP,
    IN_FLIGHT,
    OUTCOME_WRITES,
    POLICIES,
    REDIS,
    REDIS_READINESS,
    ROUTED_ENDPOINTS,
    STAGES,
    UPSTREAM_CLIENT,
    RoutedEndpoint,
)
from gateway.assertion import jwks_handler, load_signer
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.denials import (
    denial_response,
    method_not_allowed,
    not_found,
    request_id_of,
)
from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import RedisStartError
from gateway.flow import Flow, InFlightFlows
from gateway.key_agreement import key_agreement_ctx
from gateway.pipeline import default_stages, run
from gateway.policy_store import PolicyStore
from gateway.proxy.headers import client_address
from gateway.proxy.sni import misdirected_to
from gateway.proxy.streaming import upstream_session
from gateway.readiness import DOWN, RedisReadiness
from gateway.redis_client import check_eviction_policy, check_login, redis_client
from gateway.sessions.ends import session_ends_ctx
from gateway.stages.route import split_host

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

POLICY_POLL_S = 2.0
EMBEDDED_CHECK_S = 0.5
EMBEDDED_BACKOFF_FIRST_S = 0.5  # doubled after each start that dies before it answers
EMBEDDED_BACKOFF_MAX_S = 30.0
READY_TIMEOUT_S = 1.0
OUTCOME_DRAIN_S = 10.0
REDACTION_KEY_ENV = "GATEWAY_AUDIT_REDACTION_KEY"

# re-exported: the typed app state lives in gateway.appkeys (imported by stages too)
__all__ = [
    "ASSERTION_SIGNER",
    "AUDIT",
    "CLOCK",
    "CONFIG",
    "CONSOLE_APP",
    "IN_FLIGHT",
    "OUTCOME_WRITES",
    "POLICIES",
    "REDIS",
    "ROUTED_ENDPOINTS",
    "STAGES",
    "UPSTREAM_CLIENT",
    "create_app",
    "parser_limits",
    "runner_kwargs",
]


def parser_limits(config: GatewayConfig) -> dict[str, int]:
    """aiohttp's parser limits, set above the gateway's own so that the gateway answers."""
    limits = config.limits
    return {
        "max_line_size": 2 * max(limits.max_request_line_bytes, limits.max_header_bytes) + 1024,
        "max_field_size": 2 * limits.max_header_bytes + 1024,
        "max_headers": 2 * limits.max_headers + 16,
    }


def runner_kwargs(config: GatewayConfig) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner`: no access-log cost unless configured."""
    return {} if config.access_log else {"access_log": None}


def create_app(
    config: GatewayConfig, *, clock: Clock | None = None, redis_url: str | None = None
) -> web.Application:
    app = web.Application(
        # SECURITY: request bodies pass byte for byte; aiohttp would otherwise inflate a
        # gzip body and the upstream would see other bytes than the client sent.
        handler_args={**parser_limits(config), "auto_decompress": False},
        middlewares=[unrouted],
    )
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    app[IN_FLIGHT] = InFlightFlows()
    app[OUTCOME_WRITES] = set()
    app[ASSERTION_SIGNER] = load_signer(config.data_dir / "keys", issuer=config.console_url)
    app[ROUTED_ENDPOINTS] = _routed_endpoints()
    app[STAGES] = default_stages(app)
    app.cleanup_ctx.append(_redis_ctx(redis_url))
    app.cleanup_ctx.append(_policies_ctx)
    app.cleanup_ctx.append(key_agreement_ctx)  # before anything is written to Redis
    app.cleanup_ctx.append(_audit_ctx)
    app.cleanup_ctx.append(access_ctx)
    app.cleanup_ctx.append(session_ends_ctx)
    app.cleanup_ctx.append(_upstream_ctx)

    console = _console_app(app)
    app[CONSOLE_APP] = console
    app.add_domain(config.console_host, console)
    # Not routed by aiohttp's path matcher: the route stage judges the raw target itself.
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=_defer_continue)
    return app


def _routed_endpoints() -> dict[str, RoutedEndpoint]:
    endpoints: dict[str, RoutedEndpoint] = {"healthz": healthz, "readyz": readyz}
    # --- routed-host endpoints of other parts: add "auth" and "logout" handlers here ---
    endpoints.update(gateway.sessions.routed.endpoints())
    return endpoints


def _console_app(app: web.Application) -> web.Application:
    # The SNI check comes first: the console's own middlewares are added after it.
    console = web.Application(
        handler_args=parser_limits(app[CONFIG]), middlewares=[console_misdirected]
    )
    console.router.add_get("/.gateway/healthz", healthz)
    console.router.add_get("/.gateway/readyz", readyz)
    console.router.add_get("/.gateway/jwks.json", jwks_handler(app[ASSERTION_SIGNER]))
    # --- console pages and the JSON API register their routes on `console` here ---
    gateway.console.add_routes(console)
    gateway.api.add_routes(console)
    return console


async def _defer_continue(request: web.Request) -> None:
    """No automatic `100 Continue`: the forwarder sends it once the flow is authorised."""


# --- handlers -----------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    """The process is up (load balancers probe by address, so any Host answers)."""
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    """Redis answers and keeps its keys: the gateway can check grants and accept audit records."""
    verdict = await request.config_dict[REDIS_READINESS].verdict(
        request.config_dict[REDIS], now=asyncio.get_running_loop().time()
    )
    if verdict is None:
        return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})
    body = {"status": "unavailable", "redis": "down"}
    if verdict != DOWN:
        body = {"status": "unavailable", "redis": "evicting", "reason": verdict}
    return web.json_response(
        body, status=503, headers={"Cache-Control": "no-store", "Retry-After": "1"}
    )


@web.middleware
async def unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Targets aiohttp's router cannot place: the pipeline judges them on routed hosts.

    CONNECT's authority-form and `*` never match a path; on the console origin a miss is
    a 404 (or 405) in the gateway's error format.
    """
    miss = request.match_info.http_exception
    if miss is None:
        return await handler(request)
    if request.host.partition(":")[0].lower() != request.app[CONFIG].console_host:
        return await dispatch(request)
    refusal = _misdirected(request, request.app[CONFIG].console_host)
    if refusal is not None:
        return refusal
    if isinstance(miss, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(miss.allowed_methods))
        return denial_response(method_not_allowed(request.method, allow), request)
    return denial_response(not_found(), request)


@web.middleware
async def console_misdirected(request: web.Request, handler: Handler) -> web.StreamResponse:
    """421 for a console request on a TLS connection opened for another host (SNI).

    The route stage makes the same check for routed hosts; probes answer whatever the
    server name, as they do there.
    """
    if request.path not in _PROBES:
        refusal = _misdirected(request, request.config_dict[CONFIG].console_host)
        if refusal is not None:
            return refusal
    return await handler(request)


def _misdirected(request: web.Request, console_host: str) -> web.Response | None:
    denial = misdirected_to(request, console_host)
    return None if denial is None else denial_response(denial, request)


_PROBES = {"/.gateway/healthz": healthz, "/.gateway/readyz": readyz}


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every request on a routed host: probes answered here, the rest through the pipeline."""
    raw_target = request.raw_path
    probe = _PROBES.get(raw_target)
    if probe is not None and request.method in ("GET", "HEAD"):
        return await probe(request)
    app = request.app
    flow = _new_flow(request, app)
    try:
        response = await run(flow, app[STAGES])
    finally:
        app[IN_FLIGHT].discard(flow)  # the grant stage added it; ended flows leave
    if not response.prepared:
        response.headers["X-Request-Id"] = flow.request_id
    return response


def _new_flow(request: web.Request, app: web.Application) -> Flow:
    raw_target = request.raw_path
    path_part = raw_target
    if not raw_target.startswith("/") and "://" in raw_target:
        # absolute-form: the route stage checks the authority; the path starts after it
        rest = raw_target.split("://", 1)[1]
        slash = rest.find("/")
        path_part = rest[slash:] if slash >= 0 else "/"
        question = rest.find("?")
        if question >= 0 and (slash < 0 or question < slash):
            path_part = "/" + rest[question:]
    raw_path, _, query = path_part.partition("?")
    parsed = split_host(request.headers.get("Host", ""))
    return Flow(
        request_id=request_id_of(request),
        request=request,
        started_at=app[CLOCK].now(),
        started_monotonic=asyncio.get_running_loop().time(),
        client_ip=client_address(
            request.remote or "", request.headers.items(), app[CONFIG].trusted_proxies
        ),
        host=parsed[0] if parsed else "",
        method=request.method,
        raw_target=raw_target,
        raw_path=raw_path,
        query=query,
    )


# --- resources ------------------------------------------------------------------------------
def _redis_ctx(url: str | None) -> Any:
    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        embedded: EmbeddedRedis | None = None
        target = url
        if target is None and not config.redis.external:
            embedded = EmbeddedRedis(
                config.data_dir / "redis", appendfsync=config.redis.appendfsync
            )
            # SECURITY: spawned from the loop's own thread, never a worker thread: the
            # kernel's parent-death signal follows the spawning thread, so a server started
            # from `to_thread` would be killed when that pool thread retires. Blocking the
            # loop for the server's start-up (well under a second) happens once, before any
            # request is served.
            embedded.start()
            target = embedded.url
        client = redis_client(config.redis, url=target)
        app[REDIS] = client
        app[REDIS_READINESS] = RedisReadiness()
        keeper = None if embedded is None else asyncio.create_task(_keep_running(embedded, client))
        try:
            if embedded is None:
                # A refused login will not heal by itself: say so at start-up, not as 503s.
                await check_login(client, config.redis)
            # SECURITY: a Redis that may evict keys could drop audit frames and grants.
            await check_eviction_policy(client)
            yield
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            await client.aclose()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    return redis_ctx


async def _keep_running(
    embedded: EmbeddedRedis,
    client: aioredis.Redis,
    *,
    check_s: float = EMBEDDED_CHECK_S,
    first_backoff_s: float = EMBEDDED_BACKOFF_FIRST_S,
    max_backoff_s: float = EMBEDDED_BACKOFF_MAX_S,
) -> None:
    """Start the embedded server again if it dies: nothing else would bring it back, and
    every request is refused while it is down. Runs on the loop's own thread, as start()
    must (the parent-death signal follows the spawning thread), and without waiting there
    for the server to answer: the loop is never blocked while its AOF loads.

    A server that dies before it has answered (a corrupt AOF, say) is not started again
    for `first_backoff_s`, then twice as long each time up to `max_backoff_s`: neither
    spawned nor logged twice a second for ever. Once it has answered, the wait is reset.
    """
    loop = asyncio.get_running_loop()
    answered = True  # start() waited for its PING
    backoff = 0.0
    not_before = 0.0
    while True:
        await asyncio.sleep(check_s)
        if not answered and await _answers(client):
            answered = True
        if loop.time() < not_before:
            continue
        failure: str | None = None
        try:
            restarted = embedded.restart_if_dead(timeout_s=None)  # logs the exit it found
        except RedisStartError as exc:
            restarted, failure = True, f"the embedded redis-server did not start again ({exc})"
        except Exception:
            # This task must never end early: nothing else would restart the server.
            log.exception("the embedded redis-server check failed")
            restarted = True
        if not restarted:
            continue
        backoff = first_backoff_s if answered else min(backoff * 2, max_backoff_s)
        answered = False
        not_before = loop.time() + backoff
        if failure is not None:
            log.error("%s; next try in %.1fs", failure, backoff)


async def _answers(client: aioredis.Redis) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            return bool(await client.ping())
    except Exception:  # down, still loading its AOF, or slow: it has not answered yet
        return False


async def _policies_ctx(app: web.Application) -> AsyncIterator[None]:
    # An invalid policy fails start-up (PolicyError with every problem), not a request.
    config = app[CONFIG]
    # A route naming the console host is refused here too (and on every reload).
    store = PolicyStore(config.policy_files, console_host=config.console_host)
    app[POLICIES] = store
    watcher = asyncio.create_task(store.watch(POLICY_POLL_S))
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


def redaction_key(directory: Path) -> bytes:
    """The audit redaction (HMAC) key: env GATEWAY_AUDIT_REDACTION_KEY (hex) or a 0600 file."""
    from_env = os.environ.get(REDACTION_KEY_ENV)
    if from_env:
        return bytes.fromhex(from_env)
    path = directory / "redaction.key"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # SECURITY: key material only in a private directory
        # Instances starting at once on one data dir all read the one key written first.
        create_once(path, secrets.token_hex(32))
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    config, clock = app[CONFIG], app[CLOCK]
    directory = config.data_dir / "audit-keys"
    signer = await asyncio.to_thread(KeyDirectory(directory).ensure, clock.now())
    writer = AuditWriter(
        app[REDIS],
        signer,
        stream=keys.audit_stream(),
        now=clock.now,
        checkpoint_every_frames=config.audit.checkpoint_every_frames,
        checkpoint_every_s=config.audit.checkpoint_every_s,
        redactor=Redactor(await asyncio.to_thread(redaction_key, directory)),
        last_checkpoint_key=keys.audit_last_checkpoint(),
    )
    await writer.open()
    app[AUDIT] = writer
    await writer.append(event_record("gateway.start", at=clock.now(), category="gateway"))
    yield
    pending = app[OUTCOME_WRITES]
    if pending:
        # Outcomes of answers already sent are still being written: let them land.
        await asyncio.wait(set(pending), timeout=OUTCOME_DRAIN_S)
    with contextlib.suppress(Exception):
        await writer.append(event_record("gateway.stop", at=clock.now(), category="gateway"))
    await writer.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    client = upstream_session()
    app[UPSTREAM_CLIENT] = client
    yield
    await client.close()
