"""The audit-out stage: the flow's one outcome record, forwarded or not.

It runs after every flow (`always_runs`): status, bytes, duration and timings, the
headers exchanged with the upstream, captured (capped) bodies where the route asks, and
for a denial its machine code and reason. The writer redacts secrets before chaining.
A failure here cannot undo what was sent; it is logged and counted as a lost outcome.
When the answer has already been sent (forwarded flows) the write is not awaited: the
connection is free for its next request at once, and the app waits for pending outcome
writes (`OUTCOME_WRITES`) before it closes the audit writer.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from audit.exchange import ExchangeRecord, HttpExchange
from gateway.appkeys import AUDIT, CLOCK, OUTCOME_WRITES, AuditSink
from gateway.flow import Flow
from gateway.pipeline import AUDIT_OUTCOME_LOST
from gateway.stages.audit_fields import capture, headers, http_exchange

log = logging.getLogger(__name__)


class AuditOut:
    name = "audit_out"
    always_runs = True

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        if flow.outcome_attempted:
            return  # exactly one outcome per flow, even when the runner is re-entered
        flow.outcome_attempted = True
        if flow.duration_s is None:
            flow.duration_s = asyncio.get_running_loop().time() - flow.started_monotonic
        # The attempt's exchange when audit-in made it: both records name the same facts.
        exchange = flow.audit_fields
        if not isinstance(exchange, HttpExchange):
            exchange = http_exchange(flow)
        error: str | None = None
        reason: dict[str, str] = {}  # a denial's or an abort's reason replaces the attempt's
        if flow.denial is not None:
            error = flow.denial.error
            reason["reason"] = flow.denial.reason[:8192]
        elif flow.aborted is not None:
            error = "aborted"
            reason["reason"] = flow.aborted[:8192]
        elif flow.error is not None:
            error = "internal_error"
        timings: dict[str, float] = {}
        if flow.duration_s is not None:
            timings["total"] = millis(flow.duration_s)
        if flow.upstream_connect_s is not None:
            timings["wait"] = millis(flow.upstream_connect_s)
            if flow.duration_s is not None:
                timings["receive"] = millis(max(0.0, flow.duration_s - flow.upstream_connect_s))
        request_body = response_body = None
        if flow.captured_request is not None:
            request_type = flow.request.headers.get("Content-Type")
            request_body = capture(flow.captured_request, flow.request_bytes, request_type)
        if flow.captured_response is not None:
            response_type = None
            for name, value in flow.upstream_response_headers:
                if name.lower() == "content-type":
                    response_type = value
            response_body = capture(flow.captured_response, flow.response_bytes, response_type)
        body = exchange.outcome(
            self.app[CLOCK].now(),
            error=error,
            status=flow.status,
            request_bytes=flow.request_bytes,
            response_bytes=flow.response_bytes,
            timings=timings,
            request_headers=headers(flow.upstream_request_headers) if flow.forwarded else None,
            response_headers=headers(flow.upstream_response_headers) if flow.forwarded else None,
            request_body=request_body,
            response_body=response_body,
            **reason,
        )
        pending = _write(self.app[AUDIT], body)
        writes = self.app[OUTCOME_WRITES]
        writes.add(pending)
        if flow.response is not None and flow.response.prepared:
            # The answer is out already: the connection need not wait for the audit stream
            # before its next request. The app waits for these writes when it stops.
            pending.add_done_callback(lambda done: _late_result(flow, done, writes))
            flow.outcome_recorded = True
            return
        pending.add_done_callback(writes.discard)
        try:
            # Shielded: a client leaving mid-write must not leave the outcome half-done.
            flow.audit_outcome_seq = await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(lambda done: _late_result(flow, done))
            flow.outcome_recorded = True  # the write goes on; a failure is reported then
            raise
        flow.outcome_recorded = True


def millis(seconds: float) -> float:
    """Milliseconds to the microsecond, as records hold them."""
    return round(seconds * 1000, 3)


def _write(sink: AuditSink, body: ExchangeRecord) -> asyncio.Future[int]:
    """The outcome's write, begun now; its failure, whenever it comes, is in the future."""
    try:
        # The writer chains the record at once: no task is needed to begin the write.
        return sink.submit(body)
    except Exception as exc:  # reported where a failed write is (RecordError, closed)
        failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed


def _late_result(
    flow: Flow, done: asyncio.Future[int], writes: set[asyncio.Future[int]] | None = None
) -> None:
    """Report an outcome write that ended after its flow: a failure is counted and logged.

    `writes`, when given, is the app's set of pending writes, which `done` leaves (one
    callback instead of two: the outcome write is on every request's path).
    """
    if writes is not None:
        writes.discard(done)
    failure = "cancelled" if done.cancelled() else done.exception()
    if failure is None:
        flow.audit_outcome_seq = done.result()
        return
    AUDIT_OUTCOME_LOST.inc()
    log.critical("AUDIT OUTCOME LOST: flow %s: %r", flow.request_id, failure)
