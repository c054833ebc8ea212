"""`/.gateway/api/v1/login`, `/logout` and `/me`: console sessions for scripts and the CLI.

    POST /login   {email, password, totp} -> 200 {principal, csrf_token} + session cookie
    POST /logout  (X-CSRF-Token)          -> 200 {status: "logged_out"}
    GET  /me                              -> 200 {principal, csrf_token, mfa_verified_at}

`/login` needs no CSRF token (there is no session yet, and only `application/json` is
accepted, which a cross-site form cannot send). A login succeeds only once the audit
stream has accepted its record.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.accounts import LoginRefused
from gateway.accounts.model import MAX_PASSWORD
from gateway.api.common import (
    API_PREFIX,
    ApiError,
    caller,
    client_ip,
    json_body,
    principal_json,
    text_field,
    unauthorized,
)
from gateway.denials import Denial
from gateway.sessions.console import end, get_session, rotate
from gateway.sessions.logins import logins_of

log = logging.getLogger(__name__)


def refusal(exc: LoginRefused) -> ApiError:
    if exc.status == 401:
        return unauthorized(exc.error, exc.reason)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    return ApiError(Denial(exc.status, exc.error, exc.reason, headers))


def audit_down() -> ApiError:
    return ApiError(
        Denial(
            503,
            "audit_unavailable",
            "the audit trail cannot record this login now; try again shortly",
            {"Retry-After": "5"},
        )
    )


async def login(request: web.Request) -> web.Response:
    body = await json_body(request)
    email = text_field(body, "email", max_length=254)
    password = text_field(body, "password", max_length=MAX_PASSWORD)
    code = text_field(body, "totp", max_length=10)
    logins = logins_of(request.config_dict)
    address = client_ip(request)
    agent = request.headers.get("User-Agent")
    try:
        proven = await logins.password(email, password, address, user_agent=agent)
    except LoginRefused as exc:
        raise refusal(exc) from exc
    account = proven.account
    try:
        await logins.accounts.login.totp(account.key, code)
    except LoginRefused as exc:
        await logins.record_failure(
            "login.totp",
            principal=account.principal,
            client_ip=address,
            user_agent=agent,
            reason=exc.error,
        )
        raise refusal(exc) from exc
    try:
        # SECURITY: refused (409) when every session of the account ended since the epoch
        # was read with the account, before the password check.
        session = await rotate(request, account.key, logins.clock.now(), epoch=proven.session_epoch)
    except LoginRefused as exc:
        await logins.record_failure(
            "login",
            principal=account.principal,
            client_ip=address,
            user_agent=agent,
            reason=exc.error,
        )
        raise refusal(exc) from exc
    if not await logins.record_login(
        session, account.principal, via="api", client_ip=address, user_agent=agent
    ):
        raise audit_down()
    return web.json_response(
        {"principal": principal_json(account.principal), "csrf_token": session["csrf"]},
        headers={"Cache-Control": "no-store"},
    )


async def logout(request: web.Request) -> web.Response:
    who = await caller(request, fresh_mfa=False)
    logins = logins_of(request.config_dict)
    await end(request)
    try:
        await logins.record(
            "logout",
            outcome="success",
            principal=who.principal,
            session_id=who.login.session_id,
            client_ip=client_ip(request),
        )
    except Exception:
        # The logout itself has happened; a lost record of it is logged, not undone.
        log.exception("logout of %s could not be recorded", who.principal.key)
    return web.json_response({"status": "logged_out"}, headers={"Cache-Control": "no-store"})


async def me(request: web.Request) -> web.Response:
    who = await caller(request)
    session = await get_session(request)
    return web.json_response(
        {
            "principal": principal_json(who.principal),
            "csrf_token": session["csrf"],
            "mfa_verified_at": who.login.mfa_at,
        },
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/login", login)
    app.router.add_post(f"{API_PREFIX}/logout", logout)
    app.router.add_get(f"{API_PREFIX}/me", me)
