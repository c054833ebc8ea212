"""The JSON API's plumbing, shared by every `/.gateway/api/v1/` handler on the console.

- `install(console_app)`: the console-session middleware, the error middleware and the
  `Cache-Control: no-store` default for every console answer that sets no caching rule of
  its own (idempotent; `gateway.api.add_routes` and `gateway.console.add_routes` both
  call it).
- `ApiError(denial)`: raise it anywhere in a handler; the middleware answers with
  `gateway.denials.denial_response` (`{error, reason, request_id}`; HTML only if asked).
  An `AccessError` that reaches the middleware is answered as `access_refusal(exc)`.
  Any other exception becomes a 500 `internal_error` (fail closed, logged).
- `await json_body(request)`: the body as a JSON object. 415 unless
  `Content-Type: application/json` (so a cross-site HTML form can never post one),
  413 over `limits.max_json_bytes`, 400 if malformed (also a key sent twice, NaN or
  Infinity, an escaped lone surrogate, nesting past the parser's depth), 422 if not an
  object.
- `text_field(body, "name", max_length=…)`: one string field, or 422 `invalid_field`
  naming it.
- `client_ip(request)`: the client's address, believing only configured trusted proxies.
- `await caller(request)`: the logged-in `Caller` (console login + principal). 401
  `login_required` without a live session, 401 `mfa_required` when TOTP is older than
  `sessions.mfa_max_age_s`, 403 `csrf_failed` when a state-changing call lacks the
  session's token in `X-CSRF-Token`, 403 `account_disabled`.

    async def handler(request: web.Request) -> web.Response:
        who = await caller(request)
        body = await json_body(request)
        org = text_field(body, "org", max_length=64)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.access.errors import AccessError
from gateway.appkeys import CLOCK, CONFIG
from gateway.denials import Denial, denial_response, failure
from gateway.identity import Principal
from gateway.proxy.headers import client_address
from gateway.sessions import records
from gateway.sessions.console import (
    ConsoleLogin,
    csrf_ok,
    current_login,
    end,
    get_session,
    session_middleware,
)
from gateway.sessions.logins import logins_of

log = logging.getLogger(__name__)

API_PREFIX = "/.gateway/api/v1"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_CHALLENGE = 'Cookie realm="gateway"'
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_INSTALLED = web.AppKey("gateway_console_plumbing", bool)


class ApiError(Exception):
    """A refusal of an API call; carries the Denial that answers it."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(f"{denial.status} {denial.error}: {denial.reason}")
        self.denial = denial


def unauthorized(error: str, reason: str) -> ApiError:
    return ApiError(Denial(401, error, reason, {"WWW-Authenticate": LOGIN_CHALLENGE}))


def invalid_field(name: str, expected: str) -> ApiError:
    return ApiError(Denial(422, "invalid_field", f"{name}: expected {expected}"))


STORE_DOWN_REASON = "the grant store cannot be reached right now; nothing was done. Try again."


def access_refusal(exc: AccessError) -> ApiError:
    """A workflow refusal as the API and the console pages answer it (status, stable code)."""
    if exc.status == 503:
        # SECURITY: the store's own reason quotes the Redis error (host, port, socket path);
        # callers learn only that it is down (the log keeps the detail).
        return ApiError(Denial(503, exc.code, STORE_DOWN_REASON, {"Retry-After": "1"}))
    return ApiError(Denial(exc.status, exc.code, exc.reason))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return denial_response(exc.denial, request)
    except AccessError as exc:
        # A page's read of the grant store failed (a 503 when Redis is down, not a 500).
        log.warning("console request %s %s refused: %s", request.method, request.path, exc)
        return denial_response(access_refusal(exc).denial, request)
    except web.HTTPException:
        raise
    except Exception as exc:
        # SECURITY: fail closed; the exception's text never reaches the client.
        log.exception("console request %s %s failed", request.method, request.path)
        return denial_response(failure(exc), request)


@web.middleware
async def private_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Console answers carry one user's data: no cache keeps them unless a handler says so."""
    response = await handler(request)
    if not response.prepared:
        # SECURITY: an API answer (requests, justifications, the CSRF token of /me) is
        # stored by no browser or shared cache; jwks.json sets its own public max-age.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def install(console_app: web.Application) -> None:
    """Add the caching, error and console-session middlewares to the console app, once."""
    if console_app.get(_INSTALLED):
        return
    console_app[_INSTALLED] = True
    console_app.middlewares.append(private_answers)
    console_app.middlewares.append(error_middleware)
    console_app.middlewares.append(session_middleware)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole (small) body, or 413 past `limit` bytes, without reading more than that."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(Denial(413, "body_too_large", f"the body is over {limit} bytes"))
    # `StreamReader.read(n)` answers with what has arrived so far (up to n bytes), not with
    # n bytes: a body sent in pieces is read to its end, or it would be judged cut short.
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ApiError(Denial(413, "body_too_large", f"the body is over {limit} bytes"))
    return b"".join(chunks)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # SECURITY: a key sent twice is refused: which value counts would depend on the parser
    # (a proxy or log reader in front may take the first, Python takes the last).
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("a key sent twice")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity (RFC 8259)


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(Denial(415, "unsupported_media_type", "send the body as application/json"))
    data = await read_body(request, request.config_dict[CONFIG].limits.max_json_bytes)
    try:
        body = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
        # An escaped lone surrogate ("\ud800") parses, but no UTF-8 text can hold it.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the parser's recursion limit ("[[[[...").
        raise ApiError(Denial(400, "malformed_json", "the body is not valid JSON")) from exc
    if not isinstance(body, dict):
        raise ApiError(Denial(422, "invalid_body", "the body must be a JSON object"))
    return body


def text_field(
    body: Mapping[str, Any],
    name: str,
    *,
    max_length: int,
    required: bool = True,
    min_length: int = 1,
) -> str:
    """A string field ('' when optional and absent), or 422 naming it."""
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not min_length <= len(value) <= max_length:
        raise invalid_field(name, f"a string of {min_length} to {max_length} characters")
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in value):
        raise invalid_field(name, "no control characters")
    return value


@dataclass(frozen=True)
class Caller:
    """Who is calling: their console login and principal, checked for this request."""

    login: ConsoleLogin
    principal: Principal


def client_ip(request: web.Request) -> str:
    """The client's address (through trusted proxies only): throttling and audit use it."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    trusted = request.config_dict[CONFIG].trusted_proxies
    return client_address(request.remote or "", headers, trusted)


def mfa_fresh(request: web.Request, mfa_at: float) -> bool:
    """The proxy's MFA age rule (`records.mfa_fresh`), judged for this console request."""
    config = request.config_dict
    return records.mfa_fresh(mfa_at, config[CLOCK].now(), config[CONFIG].sessions)


async def caller(request: web.Request, *, fresh_mfa: bool = True) -> Caller:
    session = await get_session(request)
    login = current_login(session)
    if login is None:
        raise unauthorized("login_required", "log in on the console first")
    # SECURITY: state-changing calls carry the session's CSRF token.
    if request.method not in SAFE_METHODS and not csrf_ok(
        session, request.headers.get(CSRF_HEADER)
    ):
        raise ApiError(Denial(403, "csrf_failed", f"missing or wrong {CSRF_HEADER} header"))
    if fresh_mfa and not mfa_fresh(request, login.mfa_at):
        raise unauthorized("mfa_required", "enter a TOTP code again (step-up) to continue")
    account = await logins_of(request.config_dict).accounts.store.get(login.principal_key)
    if account is None or account.disabled:
        # SECURITY: a disabled (or deleted) account's session ends at its next request.
        await end(request)
        raise unauthorized("login_required", "this session has ended")
    return Caller(login, account.principal)


def principal_json(principal: Principal) -> dict[str, Any]:
    return {
        "kind": principal.kind.value,
        "id": principal.id,
        "key": principal.key,
        "email": principal.email,
        "name": principal.name,
        "org": principal.org,
        "role": principal.role,
    }
