"""Exports for auditors' tools: HAR 1.2, JSON Lines (ECS names), OCSF API Activity (6003).

All three read merged request records (`reader.merged_records`): one entry per proxied
request, attempt and outcome folded together, named by stream and seq.

A record an export cannot render (a forged one nested deeper than MAX_DEPTH levels, or
one that still exhausts Python's recursion) is replaced by a placeholder naming its
stream, seq and the reason, and the export goes on; each replacement is appended to the
`replaced` list the caller passes, so that it can say how many there were.

- HAR 1.2 (`har_document`): `log.pages` is empty and entries carry no `pageref`, so
  Chrome and Firefox devtools open the file as a plain request list; every timing the
  record lacks is -1 (optional) or 0 (send/wait/receive, required). Gateway facts
  (actor, member, grant, decision) ride in `_gateway` (HAR allows `_`-prefixed fields).
- JSON Lines (`jsonl_lines`): one ECS document per request or event, bytes as base64.
- OCSF (`ocsf_event`): class 6003 API Activity, OCSF 1.1; `actor.user` is the actor,
  the member acted as is a `resources` entry of type "user". Only proxied requests are
  API activity; account and workflow events are not part of this export.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from audit.reader import REQUEST_KINDS, Record, get, parse_time
from audit.record import MAX_DEPTH, too_deep

PLACEHOLDER_CODE = "record_not_exportable"
CREATOR = {"name": "impersonation-gateway audit export", "version": "1"}
OCSF_VERSION = "1.1.0"
_ACTIVITY = {  # OCSF API Activity activity_id by HTTP method
    "POST": (1, "Create"),
    "GET": (2, "Read"),
    "HEAD": (2, "Read"),
    "OPTIONS": (2, "Read"),
    "PUT": (3, "Update"),
    "PATCH": (3, "Update"),
    "DELETE": (4, "Delete"),
}


def _is_request(body: dict[str, Any]) -> bool:
    return body.get("record") in REQUEST_KINDS


def _url(body: dict[str, Any]) -> str:
    scheme = get(body, "url.scheme") or "https"
    query = get(body, "url.query")
    return f"{scheme}://{get(body, 'url.domain') or ''}{get(body, 'url.path') or '/'}" + (
        f"?{query}" if query else ""
    )


def _started(body: dict[str, Any]) -> str:
    start = get(body, "event.start") or body.get("@timestamp")
    return start if isinstance(start, str) else "1970-01-01T00:00:00.000Z"


def _headers(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        {"name": str(pair[0]), "value": str(pair[1])}
        for pair in value
        if isinstance(pair, list) and len(pair) == 2
    ]


def _ms(value: Any, default: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return default  # a record's own numbers are finite; a forged one's may not be
    return round(float(value), 3)


# -- HAR ---------------------------------------------------------------------------------
def har_entry(body: dict[str, Any]) -> dict[str, Any]:
    timings_in = get(body, "gateway.timings")
    if not isinstance(timings_in, dict):
        timings_in = {}
    timings = {
        "blocked": _ms(timings_in.get("blocked"), -1),
        "dns": -1,
        "connect": _ms(timings_in.get("connect"), -1),
        "send": _ms(timings_in.get("send"), 0),
        "wait": _ms(timings_in.get("wait"), 0),
        "receive": _ms(timings_in.get("receive"), 0),
        "ssl": _ms(timings_in.get("ssl"), -1),
    }
    duration = get(body, "event.duration")
    total = _ms(timings_in.get("total"), -1)
    if total < 0:
        total = round(duration / 1e6, 3) if isinstance(duration, int) else 0.0
    # HAR: `time` is the sum of the phases (ssl is inside connect); time the record knows
    # only as part of the total (the gateway's own work) is counted as `blocked`.
    parts = _phase_sum(timings)
    if total > parts:
        timings["blocked"] = round(max(timings["blocked"], 0) + total - parts, 3)
    query = get(body, "url.query") or ""
    request: dict[str, Any] = {
        "method": get(body, "http.request.method") or "GET",
        "url": _url(body),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": _headers(get(body, "http.request.headers")),
        "queryString": [
            {"name": n, "value": v} for n, v in parse_qsl(str(query), keep_blank_values=True)
        ],
        "headersSize": -1,
        "bodySize": _size(get(body, "http.request.bytes")),
    }
    request_body = get(body, "http.request.body")
    if isinstance(request_body, dict) and isinstance(request_body.get("content"), str):
        request["postData"] = {
            "mimeType": str(request_body.get("mime_type") or "application/octet-stream"),
            "text": request_body["content"],
        }
    status = get(body, "http.response.status_code")
    status = status if isinstance(status, int) else 0
    try:
        status_text = HTTPStatus(status).phrase if status else ""
    except ValueError:
        status_text = ""
    response_headers = _headers(get(body, "http.response.headers"))
    content: dict[str, Any] = {"size": max(_size(get(body, "http.response.bytes")), 0)}
    response_body = get(body, "http.response.body")
    mime = ""
    if isinstance(response_body, dict):
        mime = str(response_body.get("mime_type") or "")
        if isinstance(response_body.get("content"), str):
            content["text"] = response_body["content"]
            if response_body.get("encoding") == "base64":
                content["encoding"] = "base64"
    content["mimeType"] = mime or next(
        (h["value"] for h in response_headers if h["name"].lower() == "content-type"), ""
    )
    redirect = next((h["value"] for h in response_headers if h["name"].lower() == "location"), "")
    return {
        "startedDateTime": _started(body),
        "time": round(max(total, sum(v for k, v in timings.items() if v > 0 and k != "ssl")), 3),
        "request": request,
        "response": {
            "status": status,
            "statusText": status_text,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": response_headers,
            "content": content,
            "redirectURL": redirect,
            "headersSize": -1,
            "bodySize": _size(get(body, "http.response.bytes")),
        },
        "cache": {},
        "timings": timings,
        "_gateway": {
            k: v
            for k, v in {
                "request_id": get(body, "event.id"),
                "actor": get(body, "user.id"),
                "member": get(body, "user.effective.id"),
                "org": get(body, "organization.id"),
                "grant": get(body, "gateway.grant.id"),
                "decision": get(body, "gateway.decision"),
                "error": get(body, "error.code"),
                "redactions": get(body, "gateway.redactions"),
            }.items()
            if v is not None
        },
    }


def _phase_sum(timings: dict[str, float]) -> float:
    return round(sum(v for k, v in timings.items() if v > 0 and k != "ssl"), 3)


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


def har_document(
    records: Iterable[Record], replaced: list[Replaced] | None = None
) -> dict[str, Any]:
    """A HAR 1.2 document of the request records; see the module docstring for `replaced`."""
    entries = [
        _rendered(r, har_entry, _har_placeholder, replaced) for r in records if _is_request(r.body)
    ]
    entries.sort(key=lambda e: e["startedDateTime"])
    return {"log": {"version": "1.2", "creator": CREATOR, "pages": [], "entries": entries}}


def _har_placeholder(record: Record, reason: str) -> dict[str, Any]:
    entry = har_entry({"@timestamp": _placeholder_time(record.body)})
    entry["_gateway"] = _placeholder_facts(record, reason)
    return entry


# -- records that cannot be exported -------------------------------------------------------
@dataclass(frozen=True)
class Replaced:
    """A record an export replaced by a placeholder, and why."""

    stream: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"stream {self.stream} seq {self.seq}: {self.reason}"


def _rendered(
    record: Record,
    render: Callable[[dict[str, Any]], Any],
    placeholder: Callable[[Record, str], Any],
    replaced: list[Replaced] | None,
) -> Any:
    """`render(record.body)`, or the placeholder when the record cannot be rendered."""
    if too_deep(record.body):
        reason = f"nested more than {MAX_DEPTH} levels deep"
    else:
        try:
            return render(record.body)
        except RecursionError:
            # The depth check makes this unlikely; it must still cost only this record.
            reason = "exhausted the recursion limit while being exported"
    if replaced is not None:
        replaced.append(Replaced(record.stream, record.seq, reason))
    return placeholder(record, reason)


def _placeholder_time(body: dict[str, Any]) -> str:
    stamp = body.get("@timestamp")
    return stamp if isinstance(stamp, str) else "1970-01-01T00:00:00.000Z"


def _placeholder_facts(record: Record, reason: str) -> dict[str, Any]:
    return {
        "error": PLACEHOLDER_CODE,
        "reason": f"stream {record.stream} seq {record.seq}: {reason}; not exported",
        "stream": record.stream,
        "seq": record.seq,
    }


# -- JSON Lines ----------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON can hold it: string keys, no NaN or infinity (a forged or
    damaged record must not stop the export of the others, nor make it invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {
            (_jsonable(key) if isinstance(key, bytes) else str(key)): _json_safe(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def to_json(value: Any, **options: Any) -> str:
    """`value` as strict JSON (bytes as base64; see `_json_safe`); `options` as json.dumps."""
    try:
        return json.dumps(value, default=_jsonable, allow_nan=False, **options)
    except (TypeError, ValueError):
        return json.dumps(_json_safe(value), default=_jsonable, allow_nan=False, **options)


def jsonl_lines(records: Iterable[Record], replaced: list[Replaced] | None = None) -> Iterator[str]:
    """One ECS document per record; see the module docstring for `replaced`."""
    for record in records:
        yield _rendered(record, _jsonl_line, _jsonl_placeholder, replaced)


def _jsonl_line(body: dict[str, Any]) -> str:
    return to_json(body, ensure_ascii=False, sort_keys=True) + "\n"


def _jsonl_placeholder(record: Record, reason: str) -> str:
    facts = _placeholder_facts(record, reason)
    body = {
        "@timestamp": _placeholder_time(record.body),
        "event": {"kind": "pipeline_error"},
        "error": {"code": facts["error"], "message": facts["reason"]},
        "gateway": {"stream": record.stream, "seq": record.seq},
    }
    return _jsonl_line(body)


# -- OCSF ----------------------------------------------------------------------------------
def ocsf_event(body: dict[str, Any]) -> dict[str, Any]:
    method = str(get(body, "http.request.method") or "GET").upper()
    activity_id, activity = _ACTIVITY.get(method, (99, "Other"))
    status = get(body, "http.response.status_code")
    failed = body.get("record") == "http.denial" or (isinstance(status, int) and status >= 400)
    stamp = body.get("@timestamp")
    try:
        time_ms = int(parse_time(stamp) * 1000) if isinstance(stamp, str) else 0
    except (ValueError, OverflowError):
        time_ms = 0  # a damaged timestamp: the event is still exported
    user: dict[str, Any] = {"uid": get(body, "user.id") or "unknown"}
    if get(body, "user.full_name"):
        user["name"] = get(body, "user.full_name")
    if get(body, "user.email"):
        user["email_addr"] = get(body, "user.email")
    actor: dict[str, Any] = {"user": user}
    if get(body, "gateway.session.ref"):
        actor["session"] = {"uid": get(body, "gateway.session.ref")}
    url: dict[str, Any] = {
        "url_string": _url(body),
        "scheme": get(body, "url.scheme") or "https",
        "hostname": get(body, "url.domain") or "",
        "path": get(body, "url.path") or "/",
    }
    if get(body, "url.query"):
        url["query_string"] = get(body, "url.query")
    http_request: dict[str, Any] = {"http_method": method, "url": url}
    if get(body, "user_agent.original"):
        http_request["user_agent"] = get(body, "user_agent.original")
    event: dict[str, Any] = {
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 600300 + activity_id,
        "type_name": f"API Activity: {activity}",
        "time": time_ms,
        "severity_id": 1,
        "severity": "Informational",
        "status_id": 2 if failed else 1,
        "status": "Failure" if failed else "Success",
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Impersonation Gateway", "vendor_name": "impersonation-gateway"},
            "uid": get(body, "event.id") or "",
        },
        "actor": actor,
        "api": {
            "operation": f"{method} {get(body, 'url.path') or '/'}",
            "request": {"uid": get(body, "event.id") or ""},
        },
        "http_request": http_request,
        "src_endpoint": {"ip": get(body, "source.ip")} if get(body, "source.ip") else {},
        "dst_endpoint": {"hostname": get(body, "url.domain") or ""},
        "unmapped": {
            k: v
            for k, v in {
                "organization.id": get(body, "organization.id"),
                "gateway.grant.id": get(body, "gateway.grant.id"),
                "gateway.grant.scope": get(body, "gateway.grant.scope"),
                "gateway.route": get(body, "gateway.route"),
                "gateway.decision": get(body, "gateway.decision"),
            }.items()
            if v is not None
        },
    }
    if isinstance(status, int):
        event["status_code"] = str(status)
        event["http_response"] = {"code": status}
        event["api"]["response"] = {"code": status}
    reason = get(body, "error.message") or get(body, "gateway.decision.reason")
    if reason:
        event["status_detail"] = reason
    if get(body, "error.code"):
        event["api"]["response"] = {
            **event["api"].get("response", {}),
            "error": get(body, "error.code"),
        }
    if get(body, "gateway.grant.id"):
        event["metadata"]["correlation_uid"] = get(body, "gateway.grant.id")
    if get(body, "user.effective.id"):
        event["resources"] = [
            {
                "type": "user",
                "uid": get(body, "user.effective.id"),
                **(
                    {"group": {"uid": get(body, "organization.id")}}
                    if get(body, "organization.id")
                    else {}
                ),
            }
        ]
    return event


def ocsf_lines(records: Iterable[Record], replaced: list[Replaced] | None = None) -> Iterator[str]:
    """One OCSF event per request record; see the module docstring for `replaced`."""
    for record in records:
        if _is_request(record.body):
            yield _rendered(record, _ocsf_line, _ocsf_placeholder, replaced)


def _ocsf_line(body: dict[str, Any]) -> str:
    return to_json(ocsf_event(body), sort_keys=True) + "\n"


def _ocsf_placeholder(record: Record, reason: str) -> str:
    facts = _placeholder_facts(record, reason)
    event = ocsf_event({"@timestamp": _placeholder_time(record.body)})
    event.update(status_id=0, status="Unknown", status_detail=facts["reason"])
    event["unmapped"] = {f"gateway.export.{k}": v for k, v in facts.items()}
    return to_json(event, sort_keys=True) + "\n"
