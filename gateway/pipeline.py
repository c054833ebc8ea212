"""The request pipeline: the ordered stages of a proxied request and the runner that fails closed.

`default_stages(app)` is THE list, in order (DESIGN.md "One request's way through"):

    route -> session -> mfa -> grant -> policy -> audit-in -> inject -> forward -> audit-out

A stage is any object with a `name` and `async __call__(flow)`. It fills fields of the
flow or ends it: `flow.deny(Denial(...))` (or, for the forwarder and the gateway's own
endpoints, `flow.response = ...`). Once a flow has ended, ordinary stages are skipped;
a stage whose `always_runs` attribute is true (the audit outcome) runs regardless.

`run(flow, stages)` is the only place that turns an outcome into a response:
- a denial becomes the content-negotiated denial response; nothing is forwarded;
- an exception in any stage becomes a 500 denial (or, if the response had already
  started streaming, the client connection is cut so a truncated body is never taken
  for a whole one);
- exactly one audit outcome is written per flow; if that fails it is logged loudly and
  counted in `gateway_audit_outcome_lost_total`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiohttp import web
from prometheus_client import Counter

from gateway.denials import Denial, denial_response, failure, internal_error
from gateway.flow import Flow

log = logging.getLogger(__name__)

AUDIT_OUTCOME_LOST = Counter(
    "gateway_audit_outcome_lost_total",
    "Flows that ended without an accepted audit outcome record",
)
STAGE_FAILURES = Counter(
    "gateway_stage_failures_total",
    "Unexpected exceptions raised by pipeline stages (each became a denial)",
    ["stage"],
)


class Stage(Protocol):
    """One step of the pipeline. Set `always_runs = True` to run after the flow ended."""

    name: str

    async def __call__(self, flow: Flow) -> None: ...


def default_stages(app: web.Application) -> list[Stage]:
    """The pipeline, in order. Each stage reads the app's state when it runs."""
    from gateway.stages.audit_in import AuditIn
    from gateway.stages.audit_out import AuditOut
    from gateway.stages.forward import Forward
    from gateway.stages.grant import GrantLookup
    from gateway.stages.inject import Inject
    from gateway.stages.mfa import MfaCheck
    from gateway.stages.policy import PolicyCheck
    from gateway.stages.route import RouteLookup
    from gateway.stages.session import SessionCheck

    return [
        RouteLookup(app),
        SessionCheck(app),  # the app-session cookie -> flow.principal
        MfaCheck(app),  # recent-enough TOTP for that login, else step-up
        GrantLookup(app),  # the live grant for (principal, org) -> flow.grant
        PolicyCheck(app),
        AuditIn(app),
        Inject(app),
        Forward(app),
        AuditOut(app),
    ]


def _always_runs(stage: Stage) -> bool:
    return bool(getattr(stage, "always_runs", False))


_CLOSING = frozenset({400, 413, 414, 431})


def _unread_body(flow: Flow) -> bool:
    request = flow.request
    return request.body_exists and not request.content.at_eof()


def conclude(flow: Flow) -> web.StreamResponse:
    """Give an ended flow its response: the denial's, or a 500 if no stage answered."""
    if flow.response is not None:
        return flow.response
    if flow.denial is None:
        # SECURITY: a pipeline that ran out of stages without an answer forwarded nothing.
        log.error("flow %s: no stage answered or denied", flow.request_id)
        flow.denial = internal_error()
    response = denial_response(flow.denial, flow.request, request_id=flow.request_id)
    if flow.denial.status in _CLOSING or _unread_body(flow):
        # After a framing or size refusal, or with a body left unread, the next bytes on
        # this connection cannot be trusted to start a request: close it.
        response.force_close()
    flow.response = response
    flow.status = response.status
    flow.response_bytes = len(response.body) if isinstance(response.body, bytes) else 0
    return response


async def _finish_cancelled(flow: Flow, stages: list[Stage]) -> None:
    if flow.response is None or not flow.response.prepared:
        flow.response = None
        flow.deny(Denial(499, "client_closed", "The client went away; nothing more was sent."))
        conclude(flow)
    for stage in stages:
        if _always_runs(stage):
            try:
                await stage(flow)
            except Exception:
                log.exception("flow %s: stage %s failed", flow.request_id, stage.name)
    _check_outcome(flow)


def _check_outcome(flow: Flow) -> None:
    if not flow.outcome_recorded:
        AUDIT_OUTCOME_LOST.inc()
        log.critical(
            "AUDIT OUTCOME LOST: flow %s %s %s%s status %s ended without an accepted record",
            flow.request_id,
            flow.method,
            flow.host,
            flow.path or flow.raw_path,
            flow.status,
        )


async def run(flow: Flow, stages: list[Stage]) -> web.StreamResponse:
    """Run `stages` over `flow`, failing closed; returns the response for the client."""
    for stage in stages:
        final = _always_runs(stage)
        if final:
            conclude(flow)
        elif flow.ended:
            continue
        try:
            await stage(flow)
        except asyncio.CancelledError:
            # The client went away (or the server is stopping): the flow still gets its
            # one audit outcome before the cancellation goes on.
            flow.interrupted = flow.interrupted or "cancelled"
            await _finish_cancelled(flow, stages)
            raise
        except Exception as exc:
            STAGE_FAILURES.labels(stage.name).inc()
            log.exception("flow %s: stage %s failed", flow.request_id, stage.name)
            if flow.error is None:
                flow.error = exc
            if final:
                continue
            if flow.response is not None and flow.response.prepared:
                flow.cut_connection()
            else:
                # SECURITY: fail closed; whatever the stage was doing, nothing is forwarded.
                flow.response = None
                flow.denial = failure(exc)
    response = conclude(flow)
    _check_outcome(flow)
    return response
