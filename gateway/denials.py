"""Every error answer the gateway gives: proxied-flow denials and console/API errors alike.

A `Denial` says what went wrong (status, stable machine code, human reason, extra
headers); `denial_response` turns it into a response negotiated on `Accept`: HTML only
when the client names `text/html`, otherwise JSON `{error, reason, request_id}`.

    denial = Denial(403, "policy_denied", "DELETE /admin is not allowed on this route")
    return denial_response(denial, request)

RFC 9110 requirements are checked when a Denial is built, not when it is sent: 401
carries `WWW-Authenticate`, 405 carries `Allow`, 429 and 503 may carry `Retry-After`
(429 must). Redirect denials (the hand-off to the console login, MFA step-up) are 3xx
with a `Location`.
"""

from __future__ import annotations

import html
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from aiohttp import web
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REQUEST_ID: web.RequestKey[str] = web.RequestKey("gateway_request_id", str)

_REQUIRED_HEADERS: dict[int, str] = {
    401: "WWW-Authenticate",
    405: "Allow",
    429: "Retry-After",
}


def request_id_of(request: web.BaseRequest) -> str:
    """The request's id (made on first use): echoed in `X-Request-Id` and in the audit."""
    # A miss through the Mapping `get` costs a raised KeyError; a request whose state is
    # still empty (the usual case when a flow is made) cannot hold an id, so is not asked.
    found = request.get(REQUEST_ID) if len(request) else None
    if found is None:
        found = _fresh_request_id()
        request[REQUEST_ID] = found
    return found


REQUEST_ID_BYTES = 8
_IDS_PER_DRAW = 128
_spare_ids: list[str] = []


def _fresh_request_id() -> str:
    """16 random hex digits from the OS's CSPRNG, drawn `_IDS_PER_DRAW` ids at a time:
    one system call for many requests instead of one each."""
    while True:
        try:
            return _spare_ids.pop()
        except IndexError:
            width = 2 * REQUEST_ID_BYTES
            drawn = secrets.token_hex(REQUEST_ID_BYTES * _IDS_PER_DRAW)
            _spare_ids.extend(drawn[at : at + width] for at in range(0, len(drawn), width))


# A forked child must not hand out the ids its parent still holds.
os.register_at_fork(after_in_child=_spare_ids.clear)


@dataclass(frozen=True)
class Denial:
    """Why a request ends without reaching the upstream (or why an API call failed)."""

    status: int
    error: str  # stable machine code: no_grant, grant_expired, mfa_required, ...
    reason: str  # for people; never contains secrets
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 300 <= self.status <= 599:
            raise ValueError(f"denial status {self.status}: expected 300-599")
        if not self.error or not self.error.replace("_", "").isalnum():
            raise ValueError(f"denial error code {self.error!r}: expected snake_case")
        present = {name.lower() for name in self.headers}
        needed = _REQUIRED_HEADERS.get(self.status)
        if needed is not None and needed.lower() not in present:
            raise ValueError(f"a {self.status} denial needs a {needed} header (RFC 9110)")
        if 300 <= self.status < 400 and "location" not in present:
            raise ValueError(f"a {self.status} redirect denial needs a Location header")


def wants_html(accept: str) -> bool:
    """True when `Accept` names text/html with a non-zero quality (wildcards do not count)."""
    for item in accept.split(","):
        media, _, params = item.partition(";")
        if media.strip().lower() != "text/html":
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return False
        return True
    return False


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {phrase}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}}
code{{background:#eee;padding:0 .25rem}}</style></head>
<body><h1>{status} {phrase}</h1><p>{reason}</p>
<p><small>Error <code>{error}</code> &middot; request <code>{request_id}</code></small></p>
</body></html>
"""


def render_body(denial: Denial, request_id: str, *, as_html: bool) -> tuple[bytes, str]:
    """The body and its content type; every interpolated value is escaped."""
    if as_html:
        try:
            phrase = HTTPStatus(denial.status).phrase
        except ValueError:
            phrase = "Error"
        page = _PAGE.format(
            status=denial.status,
            phrase=html.escape(phrase),
            reason=html.escape(denial.reason),
            error=html.escape(denial.error),
            request_id=html.escape(request_id),
        )
        return page.encode(), "text/html; charset=utf-8"
    body = {"error": denial.error, "reason": denial.reason, "request_id": request_id}
    return json.dumps(body).encode(), "application/json"


def denial_response(
    denial: Denial, request: web.BaseRequest, *, request_id: str | None = None
) -> web.Response:
    """The one way a denial becomes a response (proxied routes, console and API)."""
    rid = request_id or request_id_of(request)
    body, content_type = render_body(
        denial, rid, as_html=wants_html(request.headers.get("Accept", ""))
    )
    response = web.Response(status=denial.status, body=body)
    response.headers.update(denial.headers)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Request-Id"] = rid
    return response


# --- the denials the gateway's own stages give ---------------------------------------
def bad_request(reason: str, error: str = "bad_request") -> Denial:
    return Denial(400, error, reason)


def not_found(reason: str = "Nothing is served here.", error: str = "not_found") -> Denial:
    return Denial(404, error, reason)


def method_not_allowed(method: str, allow: str) -> Denial:
    return Denial(405, "method_not_allowed", f"{method} is not accepted here.", {"Allow": allow})


def misdirected(reason: str) -> Denial:
    return Denial(421, "misdirected_request", reason)


def headers_too_large(reason: str) -> Denial:
    return Denial(431, "headers_too_large", reason)


def internal_error() -> Denial:
    # The reason never echoes the exception: it may carry upstream or internal detail.
    return Denial(500, "internal_error", "The gateway failed; nothing was forwarded.")


_STORE_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)


def failure(exc: BaseException) -> Denial:
    """The answer for an unexpected exception: Redis unreachable is 503, anything else 500.

    Either way nothing was forwarded or changed; Redis down is an outage the client may
    retry, not a gateway bug.
    """
    if isinstance(exc, _STORE_DOWN):
        return Denial(
            503,
            "unavailable",
            "The gateway cannot reach its store right now; nothing was done. Try again shortly.",
            {"Retry-After": "1"},
        )
    return internal_error()
