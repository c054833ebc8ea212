"""What a flow tells the audit trail: the `audit.record.http_record` arguments of a flow.

Both audit stages describe the same request the same way, so the attempt and the outcome
records of one flow name identical actor, member, grant, route and path.
"""

from __future__ import annotations

from typing import Any

from audit.record import MAX_TEXT, BodyCapture, Person
from gateway.flow import Flow
from gateway.identity import Principal


def person(principal: Principal) -> Person:
    return Person(
        id=principal.id,
        kind=str(principal.kind),
        email=principal.email or None,
        name=principal.name or None,
        org=principal.org,
        role=principal.role,
    )


def http_fields(flow: Flow) -> dict[str, Any]:
    """Keyword arguments for `http_record` common to both phases of one flow."""
    request = flow.request
    grant = flow.grant
    actor = grant.actor if grant is not None else flow.principal
    fields: dict[str, Any] = {
        "request_id": flow.request_id,
        "method": flow.method,
        "host": text(flow.host or "-"),
        # An unjudged path is recorded as received so refused requests stay visible.
        "path": text(flow.path or flow.raw_path or "-"),
        # SECURITY: the gateway's own endpoints carry one-time codes in the query.
        "query": "" if _own_endpoint(flow) else text(flow.query),
        "scheme": "https" if request.secure else "http",
        "client_ip": flow.client_ip or None,
        "user_agent": text(request.headers.get("User-Agent") or "") or None,
        "actor": person(actor) if actor is not None else None,
        "started_at": flow.started_at,
        "session_id": flow.console_session_id,
    }
    if grant is not None:
        fields["effective"] = Person(id=grant.member_id, kind="member", org=grant.org)
        fields["org"] = grant.org
        fields["grant_id"] = grant.grant_id
        fields["scope"] = str(grant.scope)
    elif flow.route is not None:
        fields["org"] = flow.route.org
    if flow.route is not None:
        fields["route"] = flow.route.name
    if flow.decision is not None:
        fields["decision"] = "allow" if flow.decision.allowed else "deny"
        fields["reason"] = flow.decision.reason[:MAX_TEXT]
        if flow.decision.rule is not None:
            fields["rule"] = flow.decision.rule.source
    return fields


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
    return [(text(name), text(value)) for name, value in pairs]


def capture(data: bytearray | None, size: int, content_type: str | None) -> BodyCapture | None:
    if data is None:
        return None
    return BodyCapture(bytes(data), content_type, size)
