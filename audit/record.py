"""Audit record bodies: ECS-shaped dicts, one builder per kind of record.

A body is what one frame carries. Builders return plain dicts (msgpack-able) and never
touch I/O; `AuditWriter.append` redacts every body (headers, captured bodies, query,
tokens anywhere) before it is chained, so callers pass what they saw.

Field names follow ECS where ECS has one: `user.*` is the actor (the vendor staff
member, or the customer admin acting), `user.effective.*` the customer member acted
as, `http.request.method`, `url.path`, `url.query`, `http.response.status_code`,
`source.ip`, `user_agent.original`, `event.*`. Fields ECS lacks live under `gateway.*`
(grant, route, decision, timings, redactions) and `organization.id` names the org.
Every body carries `record` (a `RecordKind`) and `@timestamp` (RFC 3339, UTC).

    actor = Person(id="sam", kind="staff", email="sam@vendor.example", name="Sam")
    bob = Person(id="bob", kind="member", org="acme")
    body = http_record(
        "attempt", at=clock.now(), request_id="r1", method="GET", host="acme.example",
        path="/invoices", query="page=2", actor=actor, effective=bob, org="acme",
        grant_id="g1", scope="read", route="acme", decision="allow", reason="rule x",
    )
    seq = await writer.append(body)
    body = http_record("outcome", ..., status=200, response_bytes=512,
                       timings={"connect": 1.2, "wait": 8.0, "receive": 0.4, "total": 10.1})
    body = event_record("grant.approved", at=clock.now(), category="workflow",
                        actor=alice, org="acme", grant_id="g1", details={"scope": "read"})

Signatures:
    http_record(phase, *, at, request_id, method, host, path, query="", scheme="https",
                client_ip=None, user_agent=None, actor=None, effective=None, org=None,
                grant_id=None, scope=None, route=None, session_id=None, decision=None,
                reason=None, rule=None, error=None, status=None, request_bytes=None,
                response_bytes=None, started_at=None, timings=None, request_headers=None,
                response_headers=None, request_body=None, response_body=None) -> HttpRecord
    event_record(action, *, at, category, outcome="success", actor=None, effective=None,
                 org=None, grant_id=None, request_id=None, session_id=None, client_ip=None,
                 user_agent=None, reason=None, details=None) -> dict
    Person(id, kind=None, email=None, name=None, org=None, role=None)
    BodyCapture(data: bytes, content_type: str | None, size: int)   # size = full length
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from audit.errors import RecordError


class RecordKind(StrEnum):
    HTTP_ATTEMPT = "http.attempt"  # accepted before forwarding: what is about to happen
    HTTP_OUTCOME = "http.outcome"  # what happened: status, bytes, timings, bodies
    DENIAL = "http.denial"  # a proxied request ended by a denial (the flow's one outcome)
    ACCOUNT = "account"  # login, logout, MFA, enrolment, lockout
    WORKFLOW = "workflow"  # request, approve, deny, revoke, expire, lapse, impersonate
    GATEWAY = "gateway"  # gateway start / stop, policy reload
    STREAM_START = "stream.start"  # genesis frame of a writer stream (written by the writer)
    CHECKPOINT = "checkpoint"  # signed chain head (written by the writer)


EVENT_CATEGORIES = {
    "account": RecordKind.ACCOUNT,
    "workflow": RecordKind.WORKFLOW,
    "gateway": RecordKind.GATEWAY,
}

# Timings a proxied request may report, in milliseconds; HAR uses the same names.
TIMING_NAMES = frozenset({"blocked", "connect", "ssl", "send", "wait", "receive", "total"})

MAX_TEXT = 8192  # any one string field outside captured bodies

# A record the writer makes nests a few levels (a redaction list in a map in a map), and a
# captured JSON body it walks at most this many; a value nested deeper is forged, damaged or
# hostile. `too_deep` checks without recursion, so that the answer does not depend on how
# deep the caller's stack already is.
MAX_DEPTH = 100


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests maps and lists more than `limit` levels (no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


class HttpRecord(dict[str, Any]):
    """A body made by `http_record`: a plain dict whose maps and keys are the builder's.

    Text a client or an upstream chose lies only in its `UNTRUSTED_TEXT` fields, its
    headers, query and captured bodies: the redactor scans those and nothing else (any
    other body gets the walk over every field). Add nothing to one after it is built.
    """

    __slots__ = ()


# Where an HttpRecord holds text a client or upstream chose, besides headers and bodies:
# (path of a map, keys in it).
UNTRUSTED_TEXT: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("http", "request"), ("method",)),
    (("url",), ("domain", "path", "query")),
    (("user_agent",), ("original",)),
    (("error",), ("code", "message")),
    (("gateway", "decision"), ("reason", "rule")),
    # names and addresses come from directories (a customer's own, for members)
    (("user",), ("email", "full_name")),
    (("user", "effective"), ("email", "full_name")),
    (("http", "request", "body"), ("mime_type", "content")),
    (("http", "response", "body"), ("mime_type", "content")),
)
# Every top-level key `http_record` writes: a body with any other is not its own.
HTTP_RECORD_KEYS = frozenset(
    {"record", "@timestamp", "event", "user", "organization", "gateway", "source"}
    | {"user_agent", "http", "url", "error"}
)


@dataclass(frozen=True)
class Person:
    """Someone named in a record: the actor, or the customer member acted as."""

    id: str
    kind: str | None = None  # "staff" | "member"
    email: str | None = None
    name: str | None = None
    org: str | None = None  # members only
    role: str | None = None  # members only: "admin" | "member"

    def ecs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": _text("user.id", self.id)}
        if self.email:
            out["email"] = _text("user.email", self.email)
        if self.name:
            out["full_name"] = _text("user.full_name", self.name)
        if self.org:
            out["domain"] = _text("user.domain", self.org)
        roles = [r for r in (self.kind, self.role) if r]
        if roles:
            out["roles"] = roles
        return out


@dataclass(frozen=True)
class BodyCapture:
    """A request or response body as seen, already cut to the route's cap."""

    data: bytes
    content_type: str | None
    size: int  # the full body's length; > len(data) means it was truncated

    def ecs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes": self.size}
        if self.content_type:
            out["mime_type"] = _text("mime_type", self.content_type)
        try:
            out["content"] = self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # SECURITY: a text body the cap cut inside a character stays text, so that it is
            # redacted; as base64 its secrets would be stored as they came.
            cut_in_char = self.size > len(self.data) and exc.end == len(self.data)
            if cut_in_char and exc.reason == "unexpected end of data":
                out["content"] = self.data[: exc.start].decode("utf-8")
            elif _redactable_text(self.content_type):
                # SECURITY: a JSON, form or text body with a stray byte is still text to
                # redact; stored as base64 its secrets would pass unredacted and unseen.
                out["content"] = self.data.decode("utf-8", errors="replace")
                out["encoding"] = "utf-8-replaced"
            else:
                out["content"] = base64.b64encode(self.data).decode("ascii")
                out["encoding"] = "base64"
        if self.size > len(self.data):
            out["truncated"] = True
        return out


def _redactable_text(content_type: str | None) -> bool:
    """Whether a body of this type is text the redactor reads (JSON, forms, text, XML)."""
    mime = (content_type or "").split(";")[0].strip().lower()
    return (
        mime in ("application/json", "application/x-www-form-urlencoded", "application/xml")
        or mime.endswith(("+json", "+xml"))
        or mime.startswith("text/")
    )


def timestamp(at: float) -> str:
    """RFC 3339 UTC with milliseconds, the form every record and export uses.

    Equal to `datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")` with
    `Z` (microseconds rounded half-even, then cut to milliseconds); the seconds part is
    formatted once per second, as every record of a busy second shares it.
    """
    if 0 <= at < _MAX_FAST_TIME:
        second = int(at)
        micros = round((at - second) * 1e6)
        cached = _last_second  # read once: another thread may swap it (see `_second`)
        if cached[0] == second and micros < 1_000_000:
            return cached[1] + _MILLIS[micros // 1000]  # the common case: this second's
        cached, millis = _second(at)
        return cached[1] + _MILLIS[millis]
    return _slow_timestamp(at)


def packed_timestamp(at: float) -> bytes:
    """`timestamp(at)` as msgpack packs it (a str): for bodies spliced from packed parts."""
    if 0 <= at < _MAX_FAST_TIME:
        second = int(at)
        micros = round((at - second) * 1e6)
        cached = _last_second  # as in `timestamp`
        if cached[0] == second and micros < 1_000_000:
            return cached[2] + _PACKED_MILLIS[micros // 1000]
        cached, millis = _second(at)
        return cached[2] + _PACKED_MILLIS[millis]
    text = _slow_timestamp(at).encode("utf-8")
    # msgpack's str header: fixstr below 32 bytes, else str 8 (a timestamp is short)
    head = bytes((0xA0 | len(text),)) if len(text) < 32 else bytes((0xD9, len(text)))
    return head + text


# (second, its text to the seconds, that text packed as the head of a 24-character str)
_Second = tuple[int, str, bytes]


def _second(at: float) -> tuple[_Second, int]:
    """The second of `at` (0 <= at < _MAX_FAST_TIME), formatted, and its milliseconds."""
    global _last_second
    second = int(at)
    micros = round((at - second) * 1e6)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    cached = _last_second
    if cached[0] != second:
        # One tuple, swapped whole: a thread never sees one second's prefix with another's.
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # A four-digit year makes every timestamp 24 characters: msgpack's fixstr 0xb8.
        cached = (second, text, b"\xb8" + text.encode("ascii"))
        _last_second = cached
    return cached, micros // 1000


def _slow_timestamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))  # the fraction, formatted ahead
_PACKED_MILLIS = tuple(text.encode("ascii") for text in _MILLIS)
_MAX_FAST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: four-digit years only
_last_second: _Second = (-1, "", b"")


def session_ref(session_id: str) -> str:
    """A non-secret reference to a session: records never hold a usable session id."""
    # SECURITY: a session id is a bearer credential; the audit trail keeps only its hash.
    return hashlib.sha256(b"gw-audit-session\x00" + session_id.encode()).hexdigest()[:32]


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{field}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise RecordError(f"{field}: {len(value)} characters, at most {MAX_TEXT}")
    return value


def _headers(field: str, headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    out = []
    for name, value in headers:
        _header(field, name, value)
        out.append([name, value])
    return out


def _header(field: str, name: object, value: object) -> None:
    """RecordError unless a header's name and value are strings a record can hold."""
    if not (
        type(name) is str
        and type(value) is str
        and len(name) <= MAX_TEXT
        and len(value) <= MAX_TEXT
    ):
        _text(field, name), _text(field, value)  # raises the RecordError


def _decision(decision: str | None, reason: str | None, rule: str | None) -> dict[str, str] | None:
    """`gateway.decision`: the result, its reason and rule, those given; None if none is."""
    if decision is None and reason is None and rule is None:
        return None
    return {
        k: _text(f"gateway.decision.{k}", v)
        for k, v in (("result", decision), ("reason", reason), ("rule", rule))
        if v is not None
    }


def _status(status: object) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise RecordError(f"http.response.status_code: expected 100-599, got {status!r}")
    return status


def _common(
    kind: RecordKind,
    at: float,
    actor: Person | None,
    effective: Person | None,
    org: str | None,
    grant_id: str | None,
    session_id: str | None,
    client_ip: str | None,
    user_agent: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"record": str(kind), "@timestamp": timestamp(at), "event": {}}
    if actor is not None:
        body["user"] = actor.ecs()
        if effective is not None:
            body["user"]["effective"] = effective.ecs()
    elif effective is not None:
        body["user"] = {"effective": effective.ecs()}
    if org is not None:
        body["organization"] = {"id": _text("organization.id", org)}
    gateway: dict[str, Any] = {}
    if grant_id is not None:
        gateway["grant"] = {"id": _text("gateway.grant.id", grant_id)}
    if session_id is not None:
        gateway["session"] = {"ref": session_ref(session_id)}
    if gateway:
        body["gateway"] = gateway
    if client_ip is not None:
        body["source"] = {"ip": _text("source.ip", client_ip)}
    if user_agent is not None:
        body["user_agent"] = {"original": _text("user_agent.original", user_agent)}
    return body


def http_record(
    phase: str,
    *,
    at: float,
    request_id: str,
    method: str,
    host: str,
    path: str,
    query: str = "",
    scheme: str = "https",
    client_ip: str | None = None,
    user_agent: str | None = None,
    actor: Person | None = None,
    effective: Person | None = None,
    org: str | None = None,
    grant_id: str | None = None,
    scope: str | None = None,
    route: str | None = None,
    session_id: str | None = None,
    decision: str | None = None,
    reason: str | None = None,
    rule: str | None = None,
    error: str | None = None,
    status: int | None = None,
    request_bytes: int | None = None,
    response_bytes: int | None = None,
    started_at: float | None = None,
    timings: Mapping[str, float] | None = None,
    request_headers: Iterable[tuple[str, str]] | None = None,
    response_headers: Iterable[tuple[str, str]] | None = None,
    request_body: BodyCapture | None = None,
    response_body: BodyCapture | None = None,
) -> HttpRecord:
    """A proxied request: `phase` "attempt" (before forwarding) or "outcome" (after).

    An outcome with `error` set (a denial code such as `no_grant`) is a DENIAL record.
    `at` is when the record is made; `started_at` when the request arrived. `timings`
    are milliseconds by the names in TIMING_NAMES.
    """
    if phase == "attempt":
        kind = RecordKind.HTTP_ATTEMPT
    elif phase == "outcome":
        kind = RecordKind.DENIAL if error is not None else RecordKind.HTTP_OUTCOME
    else:
        raise RecordError(f"phase: expected 'attempt' or 'outcome', got {phase!r}")
    if decision not in (None, "allow", "deny"):
        raise RecordError(f"gateway.decision: expected 'allow' or 'deny', got {decision!r}")
    body = _common(kind, at, actor, effective, org, grant_id, session_id, client_ip, user_agent)
    event = body["event"]
    event["id"] = _text("event.id", request_id)
    event["kind"] = "event"
    event["category"] = ["web"]
    event["action"] = "http-" + phase
    if started_at is not None:
        event["start"] = timestamp(started_at)
    if phase == "outcome":
        event["end"] = timestamp(at)
        event["outcome"] = (
            "failure" if error is not None or (status is not None and status >= 400) else "success"
        )
        if started_at is not None:
            event["duration"] = max(0, round((at - started_at) * 1e9))
    request: dict[str, Any] = {"id": event["id"], "method": _text("http.request.method", method)}
    if request_bytes is not None:
        request["bytes"] = _count("http.request.bytes", request_bytes)
    if request_headers is not None:
        request["headers"] = _headers("http.request.headers", request_headers)
    if request_body is not None:
        request["body"] = request_body.ecs()
    http: dict[str, Any] = {"request": request}
    if (
        status is not None
        or response_bytes is not None
        or response_headers is not None
        or response_body is not None
    ):
        response: dict[str, Any] = {}
        if status is not None:
            response["status_code"] = _status(status)
        if response_bytes is not None:
            response["bytes"] = _count("http.response.bytes", response_bytes)
        if response_headers is not None:
            response["headers"] = _headers("http.response.headers", response_headers)
        if response_body is not None:
            response["body"] = response_body.ecs()
        http["response"] = response
    body["http"] = http
    url: dict[str, Any] = {
        "scheme": _text("url.scheme", scheme),
        "domain": _text("url.domain", host),
        "path": _text("url.path", path),
    }
    if query:
        url["query"] = _text("url.query", query)
    body["url"] = url
    gateway = body.setdefault("gateway", {})
    if scope is not None:
        gateway.setdefault("grant", {})["scope"] = _text("gateway.grant.scope", scope)
    if route is not None:
        gateway["route"] = _text("gateway.route", route)
    decided = _decision(decision, reason, rule)
    if decided is not None:
        gateway["decision"] = decided
    if error is not None:
        body["error"] = {"code": _text("error.code", error)}
        if reason is not None:
            body["error"]["message"] = reason
    if timings is not None:
        gateway["timings"] = _timings(timings)
    if not gateway:
        del body["gateway"]
    return HttpRecord(body)


def event_record(
    action: str,
    *,
    at: float,
    category: str,
    outcome: str = "success",
    actor: Person | None = None,
    effective: Person | None = None,
    org: str | None = None,
    grant_id: str | None = None,
    request_id: str | None = None,
    session_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An account, workflow or gateway event, e.g. `event_record("login.failed", ...)`.

    `category` is "account", "workflow" or "gateway"; `outcome` "success", "failure" or
    "unknown". `details` (msgpack-able values) lands under `gateway.details`.
    """
    kind = EVENT_CATEGORIES.get(category)
    if kind is None:
        raise RecordError(
            f"category: expected one of {', '.join(EVENT_CATEGORIES)}, got {category!r}"
        )
    if outcome not in ("success", "failure", "unknown"):
        raise RecordError(f"event.outcome: expected success|failure|unknown, got {outcome!r}")
    body = _common(kind, at, actor, effective, org, grant_id, session_id, client_ip, user_agent)
    event = body["event"]
    event["kind"] = "event"
    event["category"] = ["iam"] if category != "gateway" else ["process"]
    event["action"] = _text("event.action", action)
    event["outcome"] = outcome
    if request_id is not None:
        event["id"] = _text("event.id", request_id)
    if reason is not None:
        event["reason"] = _text("event.reason", reason)
    if details:
        body.setdefault("gateway", {})["details"] = dict(details)
    return body


def _count(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"{field}: expected a non-negative integer, got {value!r}")
    return value


def _timings(timings: Mapping[str, float]) -> dict[str, float]:
    values = timings.values()
    if (
        timings.keys() <= TIMING_NAMES
        and {*map(type, values)} <= _FLOAT
        and all(map(_NOT_NEGATIVE, values))
    ):
        # The common case, checked without a call per timing: known names, floats >= 0.
        return dict(timings)
    out: dict[str, float] = {}
    for name, value in timings.items():
        if name not in TIMING_NAMES:
            raise RecordError(
                f"gateway.timings.{name}: unknown; known: {', '.join(sorted(TIMING_NAMES))}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise RecordError(f"gateway.timings.{name}: expected milliseconds >= 0, got {value!r}")
        out[name] = float(value)
    return out


_FLOAT = frozenset({float})
_NOT_NEGATIVE = (0.0).__le__  # False for NaN, as `value >= 0` is


def kind_of(body: Mapping[str, Any]) -> str:
    """The record kind of a decoded body ("" when the body has none)."""
    kind = body.get("record")
    return kind if isinstance(kind, str) else ""
