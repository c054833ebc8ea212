"""The application's typed state: every `web.AppKey` the gateway's parts share.

`gateway.app.create_app` fills these; stages and handlers read them from `request.app`
(or `request.config_dict` from the console sub-application). Backends are typed by the
small protocols below so that a mis-wired app fails at start-up, not at the first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.flow import InFlightFlows
from gateway.readiness import RedisReadiness
from policies.model import PolicySet

if TYPE_CHECKING:
    from gateway.assertion import AssertionSigner
    from gateway.pipeline import Stage


class PolicySource(Protocol):
    """Where the current routing policy comes from (hot-reloaded by the policy store)."""

    @property
    def current(self) -> PolicySet: ...


class AuditSink(Protocol):
    """The audit stream as the gateway writes it: `append` returns once Redis accepted;
    `submit` chains the record at once and returns a future of its seq."""

    async def append(self, body: Mapping[str, Any]) -> int: ...

    def submit(self, body: Mapping[str, Any]) -> asyncio.Future[int]: ...


RoutedEndpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG = web.AppKey("gateway_config", GatewayConfig)
CLOCK = web.AppKey("gateway_clock", Clock)
REDIS = web.AppKey("gateway_redis", aioredis.Redis)
REDIS_READINESS = web.AppKey("gateway_redis_readiness", RedisReadiness)
POLICIES = web.AppKey("gateway_policies", PolicySource)
AUDIT = web.AppKey("gateway_audit", AuditSink)
UPSTREAM_CLIENT = web.AppKey("gateway_upstream_client", aiohttp.ClientSession)
IN_FLIGHT = web.AppKey("gateway_in_flight", InFlightFlows)
ASSERTION_SIGNER: web.AppKey[AssertionSigner] = web.AppKey("gateway_assertion_signer")
STAGES: web.AppKey[list[Stage]] = web.AppKey("gateway_stages")
# Handlers for `/.gateway/<name>` on routed hosts besides healthz/readyz ("auth", "logout").
ROUTED_ENDPOINTS: web.AppKey[dict[str, RoutedEndpoint]] = web.AppKey("gateway_routed_endpoints")
CONSOLE_APP = web.AppKey("gateway_console_app", web.Application)
# Audit outcome writes still in flight (not awaited by their flow); awaited at shutdown.
OUTCOME_WRITES: web.AppKey[set[asyncio.Future[int]]] = web.AppKey("gateway_outcome_writes")
