"""One proxied request's facts and outcome: the `Flow` every pipeline stage reads and fills.

A flow is created by the app for each request on a routed host and handed to the stages
in order (see `gateway.pipeline`). A stage ends the flow by setting `denial` (or, for
the gateway's own endpoints and the forwarder, `response`); later stages see that.

In-flight flows of a grant can be ended at once (grant revoked or expired): the grant
watcher calls `InFlightFlows.abort_grant(grant_id, reason)`, which calls `Flow.abort`
on each; the forwarder stops copying, closes the upstream exchange and the client's
connection (websockets get close code 1008), and the audit outcome records `aborted`.
Those of one console login likewise, when it ends (logout, account disabled, credentials
reset): `InFlightFlows.abort_session(session_id)`, reason `session_ended`; and those of
one routed host's app session when only it ends (`/.gateway/logout` on that host):
`InFlightFlows.abort_app_session(app_session_id)`, the same reason.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.denials import Denial
from gateway.identity import ActingGrant, Principal
from policies.model import Decision, Route

log = logging.getLogger(__name__)

# Abort reasons after which a grant is never live again (the grant watcher's words).
GRANT_REVOKED = "grant_revoked"
GRANT_EXPIRED = "grant_expired"
ENDED_FOR_GOOD = frozenset({GRANT_REVOKED, GRANT_EXPIRED})
REMEMBERED_ENDED_GRANTS = 4096
SESSION_ENDED = "session_ended"  # the abort reason when the flow's console login ended
REMEMBERED_ENDED_SESSIONS = 4096


@dataclass(eq=False, slots=True)
class Flow:
    """One request on a routed host, from arrival to its single audit outcome."""

    # --- set when the flow is created, from the request as received -------------------
    request_id: str  # random, per request; in X-Request-Id, denials and the audit
    request: web.Request  # the client's request (body still unread: it is streamed)
    started_at: float  # Clock time (epoch seconds) at arrival; audit timestamps use it
    started_monotonic: float  # loop.time() at arrival; durations are measured from it
    client_ip: str  # the TCP peer (the real client once trusted proxies are resolved)
    host: str  # Host header, lower-case, without port or trailing dot
    method: str  # request method, upper-case as received
    raw_target: str  # the request-target exactly as received (origin or absolute form)
    raw_path: str  # the target's path, percent-encoding untouched
    query: str  # the target's query string as received ("" when none), never re-encoded

    # --- route stage ----------------------------------------------------------------------
    route: Route | None = None  # the policy route for `host`
    path: str | None = None  # normalised path: exactly what is judged AND forwarded
    match_path: str | None = None  # `path` as compared with rules (case-folded if the route says)
    match_paths: tuple[str, ...] = ()  # every reading an upstream might give `path`; all judged

    # --- session and mfa stages -----------------------------------------------------------
    principal: Principal | None = None  # who logged in, from the host-only app-session cookie
    console_session_id: str | None = None  # the console login the app session belongs to
    app_session_id: str | None = None  # the app session (SHA-256 of its cookie) it came with
    mfa_verified_at: float | None = None  # Clock time of that login's last TOTP check

    # --- grant and policy stages ----------------------------------------------------------
    grant: ActingGrant | None = None  # the live grant, checked against Redis for this request
    decision: Decision | None = None  # the policy decision (rule + reason) for method and path

    # --- outcome ----------------------------------------------------------------------------
    denial: Denial | None = None  # set by the stage that refused the flow
    error: BaseException | None = None  # the unexpected exception that ended the flow
    response: web.StreamResponse | None = None  # the response sent (or prepared) to the client
    forwarded: bool = False  # True once the request was handed to the upstream
    status: int | None = None  # status sent to the client
    upstream_status: int | None = None  # status the upstream answered with
    request_bytes: int = 0  # request body bytes read from the client and forwarded
    # the whole request body, read ahead by the policy stage to judge its `_method` fields
    # (routes with `method_override: body` only); the forwarder sends these bytes first,
    # then empties it (not None: the body was read, and `100-continue` answered)
    request_body_ahead: bytes | None = None
    response_bytes: int = 0  # response body bytes sent to the client
    upstream_connect_s: float | None = None  # until the upstream's response headers arrived
    duration_s: float | None = None  # arrival until the last byte was sent
    interrupted: str | None = None  # why the exchange stopped before its end (peer gone, ...)
    websocket: bool = False  # the flow was upgraded to a proxied websocket
    websocket_close_code: int | None = None  # the close code passed on to the client

    # --- audit ------------------------------------------------------------------------------
    # `http_record` arguments both phases share, made once by audit-in (actor, member,
    # grant, route, path, decision: none of them changes after the policy stage)
    audit_fields: dict[str, Any] | None = None
    audit_attempt_seq: int | None = None  # seq of the accepted attempt record (audit-in)
    audit_outcome_seq: int | None = None  # seq of the outcome record (audit-out)
    outcome_attempted: bool = False  # audit-out has begun its one write (never a second)
    outcome_recorded: bool = False  # the outcome record was accepted (or is being written)
    captured_request: bytearray | None = None  # first `capture.max_bytes` of the request body
    captured_response: bytearray | None = None  # first `capture.max_bytes` of the response
    request_truncated: bool = False  # the request body was longer than the capture cap
    response_truncated: bool = False  # the response body was longer than the capture cap
    upstream_request_headers: list[tuple[str, str]] = field(default_factory=list)
    upstream_response_headers: list[tuple[str, str]] = field(default_factory=list)

    # --- ending a flow from outside (grant revoked) -----------------------------------------
    aborted: str | None = None  # why the flow was ended from outside, if it was
    _on_abort: list[Callable[[str], None]] = field(default_factory=list, repr=False)

    @property
    def ended(self) -> bool:
        """A stage has decided the outcome (later ordinary stages are skipped)."""
        return self.denial is not None or self.response is not None

    def deny(self, denial: Denial) -> None:
        """End the flow with `denial`; the first denial wins."""
        if self.denial is None:
            self.denial = denial

    def cut_connection(self) -> None:
        """Break the client's connection now: a started response must not look complete."""
        if self.response is not None:
            self.response.force_close()
        transport = self.request.transport
        if transport is not None:
            transport.close()

    def on_abort(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Run `callback(reason)` if the flow is aborted; returns a function that unregisters.

        A callback added after the abort runs at once.
        """
        if self.aborted is not None:
            callback(self.aborted)
            return lambda: None
        self._on_abort.append(callback)

        def remove() -> None:
            if callback in self._on_abort:
                self._on_abort.remove(callback)

        return remove

    def abort(self, reason: str) -> None:
        """End this flow from outside now (e.g. its grant was revoked). Idempotent."""
        if self.aborted is not None:
            return
        self.aborted = reason
        callbacks, self._on_abort = self._on_abort, []
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                # One failing callback must not keep the others from cutting the flow off.
                log.exception("abort callback failed for flow %s", self.request_id)


class InFlightFlows:
    """The flows of this process currently forwarding under a grant, by grant id, by
    the console session (login) they belong to and by the app session they came with.

    The grant stage adds a flow as soon as a grant authorises it and the app discards it
    when the flow ends, so that revoking a grant, or ending the login, ends its flows at
    once: those about to be forwarded as well as open responses and websockets.
    """

    def __init__(self) -> None:
        self._by_grant: dict[str, set[Flow]] = {}
        self._by_session: dict[str, set[Flow]] = {}
        # Grants aborted for good (revoked, expired), most recent last: a flow whose grant
        # check read Redis just before such an abort was heard joins after it, and must
        # be ended as it joins. Bounded: that race lasts one Redis round trip.
        self._ended: OrderedDict[str, str] = OrderedDict()
        # Console sessions heard to have ended, for the same race (a session is never
        # alive again once ended).
        self._ended_sessions: OrderedDict[str, str] = OrderedDict()
        # App sessions are ids of their own (a hash of the app cookie, never a console
        # session id), kept apart so that neither kind can stand for the other.
        self._by_app_session: dict[str, set[Flow]] = {}
        self._ended_app_sessions: OrderedDict[str, str] = OrderedDict()

    def add(self, flow: Flow) -> None:
        if flow.grant is None:
            return
        grant_id = flow.grant.grant_id
        ended = self._ended.get(grant_id)
        if ended is not None:
            # SECURITY: its grant ended while the check was on its way back from Redis.
            flow.abort(ended)
            return
        session_id = flow.console_session_id
        if session_id is not None and session_id in self._ended_sessions:
            # SECURITY: its login ended after the session stage read it.
            flow.abort(SESSION_ENDED)
            return
        app_session_id = flow.app_session_id
        if app_session_id is not None and app_session_id in self._ended_app_sessions:
            # SECURITY: its host's app session ended (logout there) after the session stage.
            flow.abort(SESSION_ENDED)
            return
        self._by_grant.setdefault(grant_id, set()).add(flow)
        if session_id is not None:
            self._by_session.setdefault(session_id, set()).add(flow)
        if app_session_id is not None:
            self._by_app_session.setdefault(app_session_id, set()).add(flow)

    def discard(self, flow: Flow) -> None:
        if flow.grant is None:
            return
        _leave(self._by_grant, flow.grant.grant_id, flow)
        if flow.console_session_id is not None:
            _leave(self._by_session, flow.console_session_id, flow)
        if flow.app_session_id is not None:
            _leave(self._by_app_session, flow.app_session_id, flow)

    def of_grant(self, grant_id: str) -> frozenset[Flow]:
        return frozenset(self._by_grant.get(grant_id, ()))

    def of_session(self, session_id: str) -> frozenset[Flow]:
        return frozenset(self._by_session.get(session_id, ()))

    def session_ids(self) -> frozenset[str]:
        """The console sessions that have flows in flight now."""
        return frozenset(self._by_session)

    def of_app_session(self, app_session_id: str) -> frozenset[Flow]:
        return frozenset(self._by_app_session.get(app_session_id, ()))

    def app_session_ids(self) -> frozenset[str]:
        """The app sessions that have flows in flight now."""
        return frozenset(self._by_app_session)

    def abort_grant(self, grant_id: str, reason: str) -> int:
        """Abort every in-flight flow of `grant_id`; returns how many were aborted.

        For a grant that ended for good (`reason` in ENDED_FOR_GOOD), flows that join
        later are aborted as they join; other reasons (a member changed: the grant may be
        live again) end only the flows in flight now.
        """
        if reason in ENDED_FOR_GOOD:
            _remember(self._ended, grant_id, reason, REMEMBERED_ENDED_GRANTS)
        return _abort_all(self._by_grant.pop(grant_id, set()), reason)

    def abort_session(self, session_id: str) -> int:
        """Abort every in-flight flow of the console session `session_id` (it ended), and
        those that join later; returns how many were aborted now."""
        _remember(self._ended_sessions, session_id, SESSION_ENDED, REMEMBERED_ENDED_SESSIONS)
        return _abort_all(self._by_session.pop(session_id, set()), SESSION_ENDED)

    def abort_app_session(self, app_session_id: str) -> int:
        """Abort every in-flight flow of the app session `app_session_id` (it ended: its
        host's logout), and those that join later; returns how many were aborted now."""
        _remember(
            self._ended_app_sessions, app_session_id, SESSION_ENDED, REMEMBERED_ENDED_SESSIONS
        )
        return _abort_all(self._by_app_session.pop(app_session_id, set()), SESSION_ENDED)

    def __len__(self) -> int:
        return sum(len(flows) for flows in self._by_grant.values())


def _remember(ended: OrderedDict[str, str], key: str, reason: str, bound: int) -> None:
    # Most recent last; the oldest is forgotten first (the race it covers is long over).
    ended[key] = reason
    ended.move_to_end(key)
    while len(ended) > bound:
        ended.popitem(last=False)


def _abort_all(flows: set[Flow], reason: str) -> int:
    for flow in flows:
        flow.abort(reason)
    return len(flows)


def _leave(index: dict[str, set[Flow]], key: str, flow: Flow) -> None:
    flows = index.get(key)
    if flows is not None:
        flows.discard(flow)
        if not flows:
            del index[key]
