"""The audit-in stage: the attempt is accepted by the audit stream before anything is forwarded.

If the stream does not accept the record (Redis down, timeout, writer closed, or any
other failure) the flow is denied with 503 and nothing reaches the upstream.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.appkeys import AUDIT, CLOCK
from gateway.denials import Denial
from gateway.flow import Flow
from gateway.stages.audit_fields import http_exchange

log = logging.getLogger(__name__)

AUDIT_UNAVAILABLE = Denial(
    503,
    "audit_unavailable",
    "The audit trail is not accepting records; nothing was forwarded. Try again shortly.",
    {"Retry-After": "5"},
)


class AuditIn:
    name = "audit_in"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        try:
            # Kept on the flow: the outcome record reuses what the attempt checked.
            flow.audit_fields = exchange = http_exchange(flow)
            body = exchange.attempt(self.app[CLOCK].now())
            # The writer's own future: no coroutine frame between the flow and Redis.
            flow.audit_attempt_seq = await self.app[AUDIT].submit(body)
        except Exception:
            # SECURITY: no record, no forwarding (AuditUnavailable or anything else).
            log.exception("flow %s: audit attempt not accepted", flow.request_id)
            flow.deny(AUDIT_UNAVAILABLE)
