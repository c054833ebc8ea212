"""The two records of one proxied request, with what they share checked and redacted once.

A proxied request is recorded twice: its attempt (before forwarding) and its outcome.
Both name the same actor, member, org, grant, route, decision, client and URL; only the
phase's own facts (time, status, bytes, timings, headers, bodies, error) differ.
`HttpExchange` holds the shared `http_record` arguments, checked once; its `attempt` and
`outcome` give `ExchangeRecord`s, which the writer encodes without building, walking and
copying the shared parts a second time:

    exchange = HttpExchange(request_id="r1", method="GET", host="acme.example", path="/",
                            actor=sam, effective=bob, org="acme", grant_id="g1", ...)
    seq = await writer.append(exchange.attempt(clock.now()))
    done = writer.submit(exchange.outcome(clock.now(), status=200, response_bytes=61))

The contract: an `ExchangeRecord` is, as a mapping, exactly `http_record(phase, **its
arguments)`, and its stored bytes (`encode(redactor)`) are exactly
`redactor.scrub_encoded(that record, encode_body)`: the same fields in the same order,
the same redactions listed in the same order. The shared parts are redacted once per
flow and redactor (kept on the exchange, keyed by the redactor object, for the life of
the flow). A shape this module does not lay out itself (neither grant nor session: the
builder then moves `gateway`) takes the builder's path. The tests compare both paths
byte for byte on hostile input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from audit.errors import RecordError
from audit.frame import (
    MAX_BODY_BYTES,
    after_packing,
    array_header,
    body_packer,
    encode_body,
    map_header,
)
from audit.record import (
    MAX_TEXT,
    BodyCapture,
    HttpRecord,
    Person,
    RecordKind,
    _count,
    _decision,
    _header,
    _status,
    _text,
    _timings,
    http_record,
    packed_timestamp,
    session_ref,
)
from audit.redact import Redactor, Report, _token_like

_UNSET: Any = object()  # `outcome(reason=...)` not given: the attempt's reason stands

Note = dict[str, str]


class HttpExchange(dict[str, Any]):
    """The `http_record` arguments both records of one flow share; read-only once made.

    As a dict it holds exactly those keyword arguments. Making it runs every check the
    builder runs on them (RecordError) and lays out the shared parts of the body.
    """

    __slots__ = ("_identity", "_redacted", "_spliced", "_start", "_url")

    def __init__(
        self,
        *,
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
        started_at: float | None = None,
    ) -> None:
        super().__init__(
            request_id=request_id,
            method=method,
            host=host,
            path=path,
            query=query,
            scheme=scheme,
            client_ip=client_ip,
            user_agent=user_agent,
            actor=actor,
            effective=effective,
            org=org,
            grant_id=grant_id,
            scope=scope,
            route=route,
            session_id=session_id,
            decision=decision,
            reason=reason,
            rule=rule,
            started_at=started_at,
        )
        key = (
            actor,
            effective,
            org,
            grant_id,
            scope,
            route,
            # SECURITY: a session id is a bearer credential: the memo keeps only its ref.
            None if session_id is None else session_ref(session_id),
            client_ip,
            user_agent,
            decision,
            reason,
            rule,
        )
        identity = _IDENTITIES.get(key)
        if identity is None:
            identity = _Identity(key)
            _remember(key, identity)
        self._identity = identity
        # The builder's checks on the request's own facts: all strings, none too long (a
        # sum within the limit is each within it), else `_text` says which is not.
        if not (
            type(request_id) is type(method) is type(scheme) is type(host) is type(path) is str
            and type(query) is str
            and len(request_id) + len(method) + len(scheme) + len(host) + len(path) + len(query)
            <= MAX_TEXT
        ):
            _text("event.id", request_id)
            _text("http.request.method", method)
            _text("url.scheme", scheme)
            _text("url.domain", host)
            _text("url.path", path)
            if query:
                _text("url.query", query)
        url: dict[str, Any] = {"scheme": scheme, "domain": host, "path": path}
        if query:
            url["query"] = query
        self._url = url  # never changed: redaction copies it first
        # `event.start`, packed as an entry of the event map
        self._start = b"" if started_at is None else _START + packed_timestamp(started_at)
        self._redacted: _Redacted | None = None
        # Neither grant nor session: the builder moves `gateway`, and lays out the record.
        self._spliced = grant_id is not None or session_id is not None

    def attempt(self, at: float) -> ExchangeRecord:
        """The attempt record made at `at`."""
        return ExchangeRecord(self, "attempt", at, {})

    def outcome(
        self,
        at: float,
        *,
        error: str | None = None,
        reason: str | None = _UNSET,
        status: int | None = None,
        request_bytes: int | None = None,
        response_bytes: int | None = None,
        timings: Mapping[str, float] | None = None,
        request_headers: Iterable[tuple[str, str]] | None = None,
        response_headers: Iterable[tuple[str, str]] | None = None,
        request_body: BodyCapture | None = None,
        response_body: BodyCapture | None = None,
    ) -> ExchangeRecord:
        """The outcome record made at `at`; `reason`, when given, replaces the attempt's.

        RecordError if the builder would refuse these arguments.
        """
        own: dict[str, Any] = {
            "error": error,
            "status": status,
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "timings": timings,
            "request_headers": None if request_headers is None else tuple(request_headers),
            "response_headers": None if response_headers is None else tuple(response_headers),
            "request_body": request_body,
            "response_body": response_body,
        }
        if reason is not _UNSET:
            own["reason"] = reason
        return ExchangeRecord(self, "outcome", at, own)

    def _redacted_by(self, redactor: Redactor) -> _Redacted:
        redacted = self._redacted
        if redacted is None or redacted.redactor is not redactor:
            # Keyed by the redactor object: a record is never redacted with another's key.
            redacted = self._redacted = _Redacted(self, redactor)
        return redacted


IdentityKey = tuple[
    Person | None,
    Person | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
]
IDENTITY_MEMO = 256  # identities remembered (a login's requests share one)
IDENTITY_MEMO_TEXT = 2048  # the most text an identity may hold to be remembered
# (actor, effective, org, grant, scope, route, session ref, client, agent, decision,
# reason, rule) -> those facts checked and laid out. What is kept depends on nothing but the key
# (redacted copies are kept per redactor object, inside): every request of a login gives
# the same key, a hostile client at most IDENTITY_MEMO distinct small ones at a time. A key
# with token-like text (what the redactor redacts) is never kept: no secret outlives its
# request here.
_IDENTITIES: dict[IdentityKey, _Identity] = {}


def _remember(key: IdentityKey, identity: _Identity) -> None:
    texts: list[str] = []
    for item in key:
        if isinstance(item, Person):
            people = (item.id, item.kind, item.email, item.name, item.org, item.role)
            texts.extend(text for text in people if isinstance(text, str))
        elif isinstance(item, str):
            texts.append(item)
    if sum(map(len, texts)) > IDENTITY_MEMO_TEXT or any(map(_token_like, texts)):
        # SECURITY: text the redactor would redact is a secret the key would keep.
        return
    if len(_IDENTITIES) >= IDENTITY_MEMO:
        _IDENTITIES.clear()
    _IDENTITIES[key] = identity


class _Identity:
    """Who acts as whom, under which grant, from where, and the decision: checked, laid out.

    The maps are never changed once made (redaction copies what it changes), so every
    record of every exchange with this identity shares them.
    """

    __slots__ = (
        "grant",
        "grant_first",
        "key",
        "org",
        "redacted",
        "route",
        "session",
        "source",
        "ua",
        "user",
    )

    def __init__(self, key: IdentityKey) -> None:
        (actor, effective, org, grant_id, scope, route, session) = key[:7]
        (client_ip, user_agent, decision, reason, rule) = key[7:]
        self.key = key
        # The builder's checks, in the builder's words.
        if decision not in (None, "allow", "deny"):
            raise RecordError(f"gateway.decision: expected 'allow' or 'deny', got {decision!r}")
        user: dict[str, Any] | None = None
        if actor is not None:
            user = actor.ecs()
            if effective is not None:
                user["effective"] = effective.ecs()
        elif effective is not None:
            user = {"effective": effective.ecs()}
        self.user = user
        self.org = None if org is None else {"id": _text("organization.id", org)}
        grant: dict[str, Any] | None = None
        if grant_id is not None:
            grant = {"id": _text("gateway.grant.id", grant_id)}
        if scope is not None:
            grant = {**(grant or {}), "scope": _text("gateway.grant.scope", scope)}
        self.grant = grant
        # Without a grant id, a scope's map comes after the session's, as the builder adds it.
        self.grant_first = grant_id is not None
        self.session = None if session is None else {"ref": session}
        self.source = None if client_ip is None else {"ip": _text("source.ip", client_ip)}
        self.ua = None
        if user_agent is not None:
            self.ua = {"original": _text("user_agent.original", user_agent)}
        self.route = None if route is None else _text("gateway.route", route)
        _decision(decision, reason, rule)
        self.redacted: _IdentityRedacted | None = None

    def redacted_by(self, redactor: Redactor) -> _IdentityRedacted:
        redacted = self.redacted
        if redacted is None or redacted.redactor is not redactor:
            # Keyed by the redactor object: never redacted with another's key or lists.
            redacted = self.redacted = _IdentityRedacted(self, redactor)
        return redacted


class _IdentityRedacted:
    """An identity's parts as one redactor stores them: redacted, listed and packed.

    The packed parts are the msgpack bytes of map entries, laid out around the record's
    own parts (see `_Redacted`): `top` entries of the record's map besides its `error`,
    `before` (user, organization, then the `gateway` key), the gateway map's own entries
    (`gateway_count` of them in `gateway_entries`: grant, session, grant scope, route),
    `after` (source, user agent, then the `http` key). `user_notes` and `ua_notes` hold
    the redactions of a part, as packed notes.
    """

    __slots__ = (
        "_decisions",
        "after",
        "before",
        "gateway_count",
        "gateway_entries",
        "identity",
        "redactor",
        "top",
        "ua_notes",
        "user_notes",
    )

    def __init__(self, identity: _Identity, redactor: Redactor) -> None:
        self.identity = identity
        self.redactor = redactor
        ua, ua_notes = _scan_map(redactor, identity.ua, "user_agent", ("original",))
        user, user_notes = _scan_map(redactor, identity.user, "user", ("email", "full_name"))
        if user is not None and isinstance(user.get("effective"), dict):
            effective, more = _scan_map(
                redactor, user["effective"], "user.effective", ("email", "full_name")
            )
            if more:
                user = {**user, "effective": effective}
                user_notes = [*user_notes, *more]
        self.ua_notes = _packed_notes(ua_notes)
        self.user_notes = _packed_notes(user_notes)
        first = identity.grant if identity.grant_first else None
        late = None if identity.grant_first else identity.grant
        before = _entries(("user", user), ("organization", identity.org))
        gateway_first = _entries(("grant", first), ("session", identity.session))
        after = _entries(("source", identity.source), ("user_agent", ua))
        gateway_late = _entries(("grant", late), ("route", identity.route))
        self.top = 6 + before[0] + after[0]
        self.before = before[1] + _GATEWAY
        self.gateway_count = gateway_first[0] + gateway_late[0]
        self.gateway_entries = gateway_first[1] + gateway_late[1]
        self.after = after[1] + _HTTP
        # reason -> the packed decision entry and its redactions: the attempt's, and a few
        # denials' (the reasons a denial gives are the gateway's own few sentences).
        self._decisions: dict[str | None, _Decision] = {}

    def decision(self, reason: str | None) -> _Decision:
        """The decision entry (number of entries, bytes) with `reason`, and its notes."""
        found = self._decisions.get(reason)
        if found is None:
            key = self.identity.key
            decision, notes = _scan_map(
                self.redactor,
                _decision(key[9], reason, key[11]),
                "gateway.decision",
                ("reason", "rule"),
            )
            count, entries = _entries(("decision", decision))
            found = count, entries, _packed_notes(notes)
            # SECURITY: a reason with a redaction held a secret, which the key would keep.
            if not notes and len(self._decisions) < 8 and (reason is None or len(reason) <= 512):
                self._decisions[reason] = found
        return found


# Redactions as stored: (how many, their msgpack bytes: each note's map, in order).
PackedNotes = tuple[int, bytes]
# A decision as stored: its entry's count (0 or 1) and bytes, and its redactions.
_Decision = tuple[int, bytes, PackedNotes]


def _packed_notes(notes: list[Note]) -> PackedNotes:
    """`notes` as the items of a packed list: a list packs as its header, then its items."""
    if not notes:
        return _NO_NOTES
    return len(notes), _pack(notes)[len(array_header(len(notes))) :]


_NO_NOTES: PackedNotes = (0, b"")


class ExchangeRecord(Mapping[str, Any]):
    """One record of an `HttpExchange`; as a mapping, exactly what `http_record` builds.

    Made only by `HttpExchange.attempt` / `outcome`, which run the builder's checks on
    the record's own arguments (headers: when encoded), so that `encode` and `record`
    raise RecordError where the builder would, before the writer chains anything.
    """

    __slots__ = ("_body", "_exchange", "_own", "_parts", "at", "phase")

    def __init__(self, exchange: HttpExchange, phase: str, at: float, own: dict[str, Any]) -> None:
        self._exchange = exchange
        self.phase = phase
        self.at = at
        self._own = own
        self._body: HttpRecord | None = None
        # An attempt has no arguments of its own; an outcome always has (all of them).
        self._parts = None if phase == "attempt" else _OwnParts(own)

    def arguments(self) -> dict[str, Any]:
        """The `http_record` keyword arguments (besides the phase) this record stands for."""
        return {**self._exchange, **self._own, "at": self.at}

    def record(self) -> HttpRecord:
        """The record as `http_record` builds it."""
        if self._body is None:
            self._body = http_record(self.phase, **self.arguments())
        return self._body

    def __getitem__(self, key: str) -> Any:
        return self.record()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record())

    def __len__(self) -> int:
        return len(self.record())

    def encode(self, redactor: Redactor) -> bytes:
        """The stored bytes: `redactor.scrub_encoded(self.record(), encode_body)`."""
        exchange = self._exchange
        if not exchange._spliced:
            # Then the builder moves `gateway` in the body: its own path lays it out.
            return redactor.scrub_encoded(self.record(), encode_body)
        redacted = exchange._redacted
        if redacted is None or redacted.redactor is not redactor:
            redacted = exchange._redacted_by(redactor)
        return redacted.encode(self)


class _OwnParts:
    """An outcome's own arguments, checked as the builder checks them and laid out."""

    __slots__ = ("request_body", "request_headers", "response_body", "response_headers", "timings")

    def __init__(self, own: dict[str, Any]) -> None:
        # The builder's checks; the common values pass without a call.
        status = own["status"]
        if status is not None and not (type(status) is int and 100 <= status <= 599):
            _status(status)
        count = own["request_bytes"]
        if count is not None and not (type(count) is int and count >= 0):
            _count("http.request.bytes", count)
        count = own["response_bytes"]
        if count is not None and not (type(count) is int and count >= 0):
            _count("http.response.bytes", count)
        # Headers are checked as they are redacted, pair by pair (see `_stored_headers`).
        self.request_headers: tuple[Any, ...] | None = own["request_headers"]
        self.response_headers: tuple[Any, ...] | None = own["response_headers"]
        # BodyCapture.ecs() makes fresh maps: redaction may change them in place.
        body = own["request_body"]
        self.request_body: dict[str, Any] | None = None if body is None else body.ecs()
        body = own["response_body"]
        self.response_body: dict[str, Any] | None = None if body is None else body.ecs()
        self.timings = None if own["timings"] is None else _timings(own["timings"])
        if own["error"] is not None:
            _text("error.code", own["error"])
        if own.get("reason") is not None:
            _text("gateway.decision.reason", own["reason"])


def _request_header(name: object, value: object) -> None:
    _header("http.request.headers", name, value)


def _response_header(name: object, value: object) -> None:
    _header("http.response.headers", name, value)


_REQUEST_SIDE = ("http.request.headers", _request_header, "http.request.body")
_RESPONSE_SIDE = ("http.response.headers", _response_header, "http.response.body")


def _stored_headers(
    redactor: Redactor, pairs: tuple[Any, ...], where: str, check: Callable[[object, object], None]
) -> tuple[bytes, PackedNotes]:
    """Headers as the builder stores and the redactor redacts them, packed, and their notes.

    `check` is `_request_header` or `_response_header` (where `where` names): RecordError
    for a pair the builder refuses, as `http_record` raises it.
    """
    packed, redactions = redactor.header_list(pairs, check)
    if not redactions:
        return packed, _NO_NOTES
    key = (where, redactions)
    notes = _HEADER_NOTES.get(key)
    if notes is None:
        notes = _packed_notes(
            [{"field": where + suffix, "kind": kind} for suffix, kind in redactions]
        )
        # SECURITY: a name holding token-like text (`?token_<JWT>=…`) is never kept.
        names = "\n".join([suffix for suffix, _ in redactions])
        if len(notes[1]) <= HEADER_NOTES_TEXT and not _token_like(names):
            if len(_HEADER_NOTES) >= HEADER_NOTES_MEMO:
                _HEADER_NOTES.clear()
            _HEADER_NOTES[key] = notes
    return packed, notes


HEADER_NOTES_MEMO = 256  # header lists' redactions remembered, packed
HEADER_NOTES_TEXT = 1024  # the most bytes a remembered one packs to
# (headers' field, their redactions as (field suffix, kind)) -> those notes, packed. Every
# forwarded request lists the same few (the gateway's own assertion, a cookie header).
# What it keeps is what records list in the clear: header and parameter names, kinds.
_HEADER_NOTES: dict[tuple[str, tuple[tuple[str, str], ...]], PackedNotes] = {}


class _Redacted:
    """An exchange's parts as one redactor stores them: redacted, listed and packed.

    A record's stored bytes are spliced from packed parts: msgpack packs a value the same
    wherever it stands, so a map is its entry count's header followed by its packed keys
    and values, in order (and a list its item count's header, then its items). The parts
    are laid out in the order the builder inserts them, and the redactions listed in the
    order the redactor lists them (its own parts first: headers and captured bodies, then
    the query; then the untrusted text field by field, as `audit.record.UNTRUSTED_TEXT`
    orders it). Every map of a record has fewer than 16 entries (a fixmap: `_MAPS`).
    """

    __slots__ = (
        "attempt_event",
        "exchange",
        "identity",
        "notes",
        "outcome_event",
        "redactor",
        "request_head",
        "url",
    )

    def __init__(self, exchange: HttpExchange, redactor: Redactor) -> None:
        self.exchange = exchange
        self.redactor = redactor
        self.identity = identity = exchange._identity.redacted_by(redactor)
        method_notes: list[Note] = []
        method = exchange["method"]
        if _token_like(method):
            method = redactor._tokens(method, "http.request.method", _noter(method_notes))
        url = exchange._url
        query_notes: list[Note] = []
        if "query" in url:
            url = dict(url)
            url["query"] = redactor._query(url["query"], "url.query", _noter(query_notes))
        url_notes: list[Note] = []
        if (
            _token_like(url["domain"])
            or _token_like(url["path"])
            or ("query" in url and _token_like(url["query"]))
        ):
            for name in ("domain", "path", "query"):
                text = url.get(name)
                if isinstance(text, str) and _token_like(text):
                    url = url if url is not exchange._url else dict(url)
                    url[name] = redactor._tokens(text, f"url.{name}", _noter(url_notes))
        pack = body_packer().pack
        self.url = _URL + pack(url)
        request_id = _ID + pack(exchange["request_id"])
        self.request_head = request_id + _METHOD + pack(method)
        # `event` up to the record's own facts: id, kind, category, action, start (, end)
        event_head = request_id + _EVENT_KIND
        start = exchange._start
        started = bool(start)
        self.attempt_event = b"".join(
            (_EVENT, _MAPS[4 + started], event_head, _ATTEMPT_ACTION, start)
        )
        self.outcome_event = b"".join(
            (_EVENT, _MAPS[6 + 2 * started], event_head, _OUTCOME_ACTION, start, _END)
        )
        # The redactions every record of the exchange lists between its own and the rest.
        self.notes = identity.ua_notes
        if query_notes or method_notes or url_notes:
            count, packed = _packed_notes([*query_notes, *method_notes, *url_notes])
            self.notes = count + identity.ua_notes[0], packed + identity.ua_notes[1]

    def encode(self, record: ExchangeRecord) -> bytes:
        """The stored bytes of `record`: `scrub_encoded(http_record(...))`, spliced."""
        parts = record._parts
        try:
            data = self._attempt(record.at) if parts is None else self._outcome(record, parts)
        except (TypeError, ValueError, OverflowError) as exc:
            # As encode_body says it (text a record cannot hold, e.g. a lone surrogate).
            raise RecordError(f"record body is not storable as msgpack: {exc}") from exc
        after_packing(len(data))
        if len(data) > MAX_BODY_BYTES:
            raise RecordError(f"record body is {len(data)} bytes, at most {MAX_BODY_BYTES}")
        return data

    def _attempt(self, at: float) -> bytes:
        shared = self.identity
        decided, entry, decision_notes = shared.decision(self.exchange["reason"])
        notes, user_notes = self.notes, shared.user_notes
        count = notes[0] + decision_notes[0] + user_notes[0]
        redactions = b""
        if count:
            redactions = b"".join(
                (_REDACTIONS, array_header(count), notes[1], decision_notes[1], user_notes[1])
            )
        return b"".join(
            (
                _MAPS[shared.top],
                _ATTEMPT_KIND,
                _TIMESTAMP,
                packed_timestamp(at),
                self.attempt_event,
                shared.before,
                _MAPS[shared.gateway_count + decided + bool(count)],
                shared.gateway_entries,
                entry,
                redactions,
                shared.after,
                _ATTEMPT_HTTP,
                self.request_head,
                self.url,
            )
        )

    def _outcome(self, record: ExchangeRecord, parts: _OwnParts) -> bytes:
        pack = body_packer().pack  # this thread's packer: left empty after every call
        exchange = self.exchange
        shared = self.identity
        redactor = self.redactor
        own_args = record._own
        at = record.at
        stamp = packed_timestamp(at)
        error = own_args["error"]
        status = own_args["status"]
        started_at = exchange["started_at"]
        failed = error is not None or (status is not None and status >= 400)
        duration = b""
        if started_at is not None:
            duration = _DURATION + pack(max(0, round((at - started_at) * 1e9)))
        own: list[bytes] = []  # the record's own redactions, packed: headers', bodies'
        counted = 0
        tail: list[Note] = []  # captured bodies' untrusted text: listed last
        request = [self.request_head]  # id and method
        if own_args["request_bytes"] is not None:
            request.append(_BYTES + pack(own_args["request_bytes"]))
        if parts.request_headers is not None or parts.request_body is not None:
            counted += _headers_and_body(
                redactor,
                _REQUEST_SIDE,
                parts.request_headers,
                parts.request_body,
                request,
                own,
                tail,
            )
        response: list[bytes] = []
        if status is not None:
            response.append(_STATUS + pack(status))
        if own_args["response_bytes"] is not None:
            response.append(_BYTES + pack(own_args["response_bytes"]))
        if parts.response_headers is not None or parts.response_body is not None:
            counted += _headers_and_body(
                redactor,
                _RESPONSE_SIDE,
                parts.response_headers,
                parts.response_body,
                response,
                own,
                tail,
            )
        http = [_MAPS[2 if response else 1], _REQUEST, _MAPS[len(request) + 1], *request]
        if response:
            http.append(_RESPONSE)
            http.append(_MAPS[len(response)])
            http.extend(response)
        reason = own_args["reason"] if "reason" in own_args else exchange["reason"]
        decided, entry, decision_notes = shared.decision(reason)
        failure = b""
        error_notes = _NO_NOTES
        if error is not None:
            fault: dict[str, Any] = {"code": error}
            if reason is not None:
                fault["message"] = reason
            fault, scanned = _scan_map(redactor, fault, "error", ("code", "message"))
            failure = _ERROR + pack(fault)
            error_notes = _packed_notes(scanned)
        timings = b""
        if parts.timings is not None:
            timings = _TIMINGS + pack(parts.timings)
        shared_notes, user_notes = self.notes, shared.user_notes
        count = counted + shared_notes[0] + error_notes[0] + decision_notes[0]
        count += user_notes[0] + len(tail)
        redactions = b""
        if count:
            redactions = b"".join(
                (
                    _REDACTIONS,
                    array_header(count),
                    *own,
                    shared_notes[1],
                    error_notes[1],
                    decision_notes[1],
                    user_notes[1],
                    _packed_notes(tail)[1],
                )
            )
        return b"".join(
            (
                _MAPS[shared.top + bool(failure)],
                _DENIAL_KIND if error is not None else _OUTCOME_KIND,
                _TIMESTAMP,
                stamp,
                self.outcome_event,
                stamp,
                _FAILURE if failed else _SUCCESS,
                duration,
                shared.before,
                _MAPS[shared.gateway_count + decided + bool(timings) + bool(count)],
                shared.gateway_entries,
                entry,
                timings,
                redactions,
                shared.after,
                *http,
                self.url,
                failure,
            )
        )


def _pack(value: Any) -> bytes:
    packed: bytes = body_packer().pack(value)
    return packed


def _entries(*items: tuple[str, Any]) -> tuple[int, bytes]:
    """The map entries (key, value) whose value is not None: their number and bytes."""
    present = [(key, value) for key, value in items if value is not None]
    return len(present), b"".join(_pack(key) + _pack(value) for key, value in present)


_MAPS = tuple(map_header(n) for n in range(16))  # every map of a record is this small
_ATTEMPT_KIND = _pack("record") + _pack(str(RecordKind.HTTP_ATTEMPT))
_OUTCOME_KIND = _pack("record") + _pack(str(RecordKind.HTTP_OUTCOME))
_DENIAL_KIND = _pack("record") + _pack(str(RecordKind.DENIAL))
_TIMESTAMP = _pack("@timestamp")
_EVENT = _pack("event")
_EVENT_KIND = _pack("kind") + _pack("event") + _pack("category") + _pack(["web"])
_ATTEMPT_ACTION = _pack("action") + _pack("http-attempt")
_OUTCOME_ACTION = _pack("action") + _pack("http-outcome")
_END = _pack("end")
_SUCCESS = _pack("outcome") + _pack("success")
_FAILURE = _pack("outcome") + _pack("failure")
_DURATION = _pack("duration")
_GATEWAY = _pack("gateway")
_HTTP = _pack("http")
_REQUEST = _pack("request")
_RESPONSE = _pack("response")
_BYTES = _pack("bytes")
_HEADERS = _pack("headers")
_BODY = _pack("body")
_STATUS = _pack("status_code")
_TIMINGS = _pack("timings")
_REDACTIONS = _pack("redactions")
_ERROR = _pack("error")
_START = _pack("start")
_URL = _pack("url")
_ID = _pack("id")
_METHOD = _pack("method")
_ATTEMPT_HTTP = _MAPS[1] + _REQUEST + _MAPS[2]  # an attempt's http: its request's id, method


def _noter(listed: list[Note]) -> Report:
    def note(field: str, kind: str) -> None:
        listed.append({"field": field, "kind": kind})

    return note


def _scan_map(
    redactor: Redactor, value: dict[str, Any] | None, where: str, names: tuple[str, ...]
) -> tuple[Any, list[Note]]:
    """`value` with tokens in its `names` fields redacted (a copy if any is), and the notes."""
    notes: list[Note] = []
    if value is None:
        return None, notes
    out = value
    for name in names:
        text = out.get(name)
        if isinstance(text, str) and _token_like(text):
            if out is value:
                out = dict(value)
            out[name] = redactor._tokens(text, f"{where}.{name}", _noter(notes))
    return out, notes


# A side of the exchange: its headers' field, their check, and its captured body's field.
_Side = tuple[str, Callable[[object, object], None], str]


def _headers_and_body(
    redactor: Redactor,
    side: _Side,
    headers: tuple[Any, ...] | None,
    body: dict[str, Any] | None,
    entries: list[bytes],
    own: list[bytes],
    tail: list[Note],
) -> int:
    """One side's headers and captured body as the builder stores them: their packed entries
    appended to `entries`, their packed redactions to `own`; the number of redactions."""
    headers_where, check, body_where = side
    counted = 0
    if headers is not None:
        packed, notes = _stored_headers(redactor, headers, headers_where, check)
        entries.append(_HEADERS + packed)
        counted += notes[0]
        own.append(notes[1])
    if body is not None:
        listed: list[Note] = []
        captured = _capture(redactor, body, body_where, listed, tail)
        entries.append(_BODY + _pack(captured))
        counted += len(listed)
        own.append(_packed_notes(listed)[1])
    return counted


def _capture(
    redactor: Redactor, body: dict[str, Any], where: str, listed: list[Note], tail: list[Note]
) -> dict[str, Any]:
    """A captured body redacted as the redactor does: structure first, then its text."""
    body = dict(body)
    redactor._body(body, f"{where}.content", _noter(listed))
    for name in ("mime_type", "content"):
        text = body.get(name)
        if isinstance(text, str) and _token_like(text):
            body[name] = redactor._tokens(text, f"{where}.{name}", _noter(tail))
    return body
