"""What a flow tells the audit trail: the `audit.exchange.HttpExchange` of a flow.

Both audit stages describe the same request the same way, so the attempt and the outcome
records of one flow name identical actor, member, grant, route and path: audit-in makes
the exchange (the `http_record` arguments both phases share) and keeps it on the flow.
"""

from __future__ import annotations

from itertools import chain

from audit.exchange import HttpExchange
from audit.record import MAX_TEXT, BodyCapture, Person
from gateway.flow import Flow
from gateway.identity import Principal


def person(principal: Principal) -> Person:
    """The record's view of a principal (one per distinct principal, remembered)."""
    global _last_person
    last = _last_person
    if last[0] is principal:
        # The same object as the last call's (a cached grant's actor, request after
        # request): no hash of its fields. Held here, so its id is not reused meanwhile.
        return last[1]
    found = _PERSONS.get(principal)
    if found is None:
        found = Person(
            id=principal.id,
            kind=str(principal.kind),
            email=principal.email or None,
            name=principal.name or None,
            org=principal.org,
            role=principal.role,
        )
        if len(_PERSONS) >= PERSON_MEMO:
            _PERSONS.clear()
        _PERSONS[principal] = found
    _last_person = (principal, found)  # one tuple, swapped whole
    return found


def member(member_id: str, org: str) -> Person:
    """The record's view of the member acted as (remembered, as `person`)."""
    key = (member_id, org)
    found = _MEMBERS.get(key)
    if found is None:
        found = Person(id=member_id, kind="member", org=org)
        if len(_MEMBERS) >= PERSON_MEMO:
            _MEMBERS.clear()
        _MEMBERS[key] = found
    return found


# Both are frozen values made only from their key (every field of the principal; the
# member's id and org), so a remembered one is the one that would be made. Bounded: at
# most PERSON_MEMO of each, then they start again.
PERSON_MEMO = 1024
_PERSONS: dict[Principal, Person] = {}
_MEMBERS: dict[tuple[str, str], Person] = {}
_last_person: tuple[Principal | None, Person] = (None, Person(id="-"))


def http_exchange(flow: Flow) -> HttpExchange:
    """The facts both records of `flow` share (RecordError if a record cannot hold them)."""
    request = flow.request
    grant = flow.grant
    route = flow.route
    decision = flow.decision
    actor = grant.actor if grant is not None else flow.principal
    return HttpExchange(
        request_id=flow.request_id,
        method=flow.method,
        host=text(flow.host or "-"),
        # An unjudged path is recorded as received so refused requests stay visible.
        path=text(flow.path or flow.raw_path or "-"),
        # SECURITY: the gateway's own endpoints carry one-time codes in the query.
        query="" if _own_endpoint(flow) else text(flow.query),
        scheme="https" if request.secure else "http",
        client_ip=flow.client_ip or None,
        user_agent=text(request.headers.get("User-Agent") or "") or None,
        actor=person(actor) if actor is not None else None,
        effective=None if grant is None else member(grant.member_id, grant.org),
        org=grant.org if grant is not None else route.org if route is not None else None,
        grant_id=None if grant is None else grant.grant_id,
        scope=None if grant is None else str(grant.scope),
        route=None if route is None else route.name,
        session_id=flow.console_session_id,
        decision=None if decision is None else "allow" if decision.allowed else "deny",
        reason=None if decision is None else decision.reason[:MAX_TEXT],
        rule=None if decision is None or decision.rule is None else decision.rule.source,
        started_at=flow.started_at,
    )


def text(value: str) -> str:
    """A received string as a record can hold it: valid UTF-8, within the length limit.

    aiohttp hands over undecodable bytes as surrogates; a record must never fail on them
    (the attempt record failing would refuse the request).
    """
    if value.isascii() and len(value) <= MAX_TEXT:
        return value  # the common case: nothing to replace or cut
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:MAX_TEXT]


def _own_endpoint(flow: Flow) -> bool:
    path = flow.path or flow.raw_path
    return path == "/.gateway" or path.startswith("/.gateway/")


def headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers as a record may hold them: every name and value within the record's limit."""
    joined = "".join(chain.from_iterable(pairs))  # no list built on the request path
    if joined.isascii() and len(joined) <= MAX_TEXT:
        return pairs  # the common case: no text to replace or cut (each is part of `joined`)
    return [(text(name), text(value)) for name, value in pairs]


def capture(data: bytearray | None, size: int, content_type: str | None) -> BodyCapture | None:
    if data is None:
        return None
    # The label is sender-supplied text like any other: one a record cannot hold (too
    # long, undecodable bytes) would otherwise cost the whole outcome record.
    return BodyCapture(bytes(data), None if content_type is None else text(content_type), size)
