"""The console's pages: login (password, then TOTP), enrolment, step-up, logout, home.

    GET  /login?return=<signed>|next=<path>   POST /login         (email, password)
    GET  /login/totp                          POST /login/totp    (code)
    GET  /enrol                               POST /enrol         (email, password, token)
                                              POST /enrol/confirm (code)
    GET  /step-up?return=…|next=…             POST /step-up       (code)
    GET  /logout                              POST /logout
    GET  /

Every POST carries the session's CSRF token (`csrf_token` field). After a login or a
step-up the browser continues where it was going: back to a routed host through a
one-time hand-off code (`/.gateway/auth?code=…`), or to a console path.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from typing import Any

import aiohttp_jinja2
import segno
from aiohttp import web
from aiohttp_session import Session
from markupsafe import Markup

from gateway.accounts import Account, LoginRefused
from gateway.accounts.model import MAX_PASSWORD
from gateway.accounts.totp import provisioning_uri
from gateway.api.common import LOGIN_CHALLENGE, ApiError, client_ip, mfa_fresh
from gateway.console.forms import field, local_path, read_form
from gateway.denials import Denial
from gateway.identity import Principal
from gateway.sessions.console import (
    PENDING_TTL_S,
    csrf_ok,
    csrf_token,
    current_login,
    end,
    get_session,
    rotate,
)
from gateway.sessions.handoff import handoff_key, routed_url_parts, url_port
from gateway.sessions.logins import Logins, logins_of
from gateway.sessions.prelogin import MAX_DESTINATION

log = logging.getLogger(__name__)

ISSUER = "Impersonation gateway"
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


# --- shared steps ---------------------------------------------------------------------
def render(
    request: web.Request,
    session: Session,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    values = {"csrf_token": csrf_token(session), "error": None, "note": None, "email": ""}
    values.update(context or {})
    response = aiohttp_jinja2.render_template(template, request, values, status=status)
    response.headers.update(_HEADERS)
    if headers:
        response.headers.update(headers)
    return response


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **_HEADERS})


def refused(
    request: web.Request,
    session: Session,
    template: str,
    exc: LoginRefused,
    context: dict[str, Any] | None = None,
) -> web.Response:
    """A form page again, saying why a login step was refused (status and headers too)."""
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = LOGIN_CHALLENGE
    elif exc.retry_after:
        headers["Retry-After"] = str(exc.retry_after)
    values = {**(context or {}), "error": exc.reason}
    return render(request, session, template, values, status=exc.status, headers=headers)


async def posted_form(request: web.Request, session: Session) -> dict[str, str]:
    form = await read_form(request)
    # SECURITY: every state-changing console form carries the session's CSRF token.
    if not csrf_ok(session, form.get("csrf_token")):
        raise ApiError(
            Denial(
                403,
                "csrf_failed",
                "the form expired or did not come from this console; reload the page and try again",
            )
        )
    return form


async def form_post(request: web.Request) -> tuple[Session, Logins, dict[str, str]]:
    """A console form's POST: this request's session and logins, and its CSRF-checked form."""
    session = await get_session(request)
    return session, logins_of(request.config_dict), await posted_form(request, session)


def remember_destination(request: web.Request, session: Session, logins: Logins) -> None:
    """Keep ?return= (signed routed-host address) or ?next= (console path) for later."""
    returning = request.query.get("return")
    following = request.query.get("next")
    if returning is not None:
        if len(returning) > MAX_DESTINATION:
            # The pre-login cookie must hold it: a clear refusal, not a login that forgets.
            raise ApiError(Denial(400, "invalid_return", "the return address is too long"))
        if logins.addresses.verify(returning, logins.is_routed_host) is None:
            # SECURITY: only addresses the gateway signed, on a routed host (no open redirect).
            raise ApiError(
                Denial(400, "invalid_return", "the return address is not one this gateway made")
            )
        session["return"] = returning
        session.pop("next", None)
    elif following is not None:
        if local_path(following) is None:
            raise ApiError(Denial(400, "invalid_next", "next must be a path on this console"))
        session["next"] = following
        session.pop("return", None)


async def proceed(request: web.Request, session: Session, logins: Logins) -> web.Response:
    """After login or step-up: hand off to the routed host, or go to the console path."""
    returning = session.pop("return", None)
    following = session.pop("next", None)
    login = current_login(session)
    if isinstance(returning, str) and login is not None:
        address = logins.addresses.verify_bound(returning, logins.is_routed_host)
        parts = routed_url_parts(address.url) if address else None
        if address is not None and parts is not None:
            host, netloc, target = parts
            code = await logins.codes.issue(
                login.session_id,
                login.principal_key,
                host,
                target,
                binding=address.binding,
                port=url_port(address.url),
            )
            return see_other(f"https://{netloc}/.gateway/auth?code={code}")
    if isinstance(following, str) and local_path(following):
        return see_other(following)
    return see_other("/")


async def record_login(
    request: web.Request, session: Session, logins: Logins, account: Account, via: str
) -> web.Response | None:
    """Audit a completed login; if the audit refuses, the login is undone (fail closed)."""
    if not await logins.record_login(
        session,
        account.principal,
        via=via,
        client_ip=client_ip(request),
        user_agent=request.headers.get("User-Agent"),
    ):
        return render(
            request,
            await get_session(request),
            "login.html",
            {"error": "The audit trail cannot record logins now; nothing was done. Try again."},
            status=503,
            headers={"Retry-After": "5"},
        )
    return None


async def establish(
    request: web.Request, logins: Logins, account: Account, epoch: int
) -> Session | web.Response:
    """The new console session of a login whose credentials were all proven; or, when
    every session of the account was ended since its password step read `epoch`, the
    login page again (409), the refusal recorded."""
    try:
        return await rotate(request, account.key, logins.clock.now(), epoch=epoch)
    except LoginRefused as exc:
        await logins.record_failure(
            "login", principal=account.principal, client_ip=client_ip(request), reason=exc.error
        )
        return refused(request, await get_session(request), "login.html", exc)


async def signed_in(request: web.Request, back: str) -> Principal | web.Response:
    """The logged-in principal of a console page, or the redirect that gets one.

    No login -> the login page; TOTP too old -> step-up; account disabled or gone ->
    the session ends here and the login page follows. `back` is where to return after.
    """
    session = await get_session(request)
    login = current_login(session)
    if login is None:
        return see_other("/login" if back == "/" else f"/login?next={back}")
    # SECURITY: console pages need a fresh TOTP check, like the API and routed hosts.
    if not mfa_fresh(request, login.mfa_at):
        return see_other(f"/step-up?next={back}")
    account = await logins_of(request.config_dict).accounts.store.get(login.principal_key)
    if account is None or account.disabled:
        # SECURITY: a disabled (or deleted) account's session ends at its next page view.
        await end(request)
        return see_other("/login")
    return account.principal


def _pending(session: Session, logins: Logins, name: str) -> dict[str, Any] | None:
    value = session.get(name)
    if not isinstance(value, dict) or not isinstance(value.get("at"), int | float):
        return None
    epoch = value.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        return None  # the login must carry the session epoch its password step read
    if logins.clock.now() - value["at"] > PENDING_TTL_S:
        session.pop(name, None)
        return None
    return value


def _password_proof(logins: Logins, account: Account) -> str:
    """Names the password an account has now, without the session holding its hash: keyed,
    since the pre-login state travels in a cookie (nothing in it helps offline guessing)."""
    message = f"proof|{account.key}|{account.password_hash}".encode()
    return hmac.new(handoff_key(logins.config.data_dir), message, hashlib.sha256).hexdigest()


def _password_unchanged(logins: Logins, step: dict[str, Any], account: Account | None) -> bool:
    """Whether a pending step's proven password is still the account's (no reset since)."""
    proof = step.get("proof")
    if account is None or not isinstance(proof, str):
        return False
    # SECURITY: a password reset ends every session; it voids a half-done login too.
    return hmac.compare_digest(_password_proof(logins, account), proof)


# --- pages ----------------------------------------------------------------------------
async def home(request: web.Request) -> web.Response:
    who = await signed_in(request, "/")
    if isinstance(who, web.Response):
        return who
    return render(request, await get_session(request), "home.html", {"principal": who})


async def login_page(request: web.Request) -> web.Response:
    session = await get_session(request)
    logins = logins_of(request.config_dict)
    remember_destination(request, session, logins)
    login = current_login(session)
    if login is not None:
        if mfa_fresh(request, login.mfa_at):
            return await proceed(request, session, logins)
        return see_other("/step-up")
    return render(request, session, "login.html")


async def login_submit(request: web.Request) -> web.Response:
    session, logins, form = await form_post(request)
    email = field(form, "email", max_length=254)
    password = field(form, "password", max_length=MAX_PASSWORD)
    address = client_ip(request)
    try:
        proven = await logins.password(
            email, password, address, user_agent=request.headers.get("User-Agent")
        )
    except LoginRefused as exc:
        return refused(request, session, "login.html", exc, {"email": email})
    account = proven.account
    if not account.enrolled:
        session.pop("pending", None)
        return render(
            request,
            session,
            "enrol.html",
            {
                "note": "This account has no authenticator yet: set it up with your enrolment "
                "token.",
                "email": account.principal.email,
            },
        )
    session["pending"] = {
        "principal": account.key,
        "at": logins.clock.now(),
        "proof": _password_proof(logins, account),
        "epoch": proven.session_epoch,
    }
    return see_other("/login/totp")


async def totp_page(request: web.Request) -> web.Response:
    session = await get_session(request)
    logins = logins_of(request.config_dict)
    if _pending(session, logins, "pending") is None:
        return see_other("/login")
    return render(request, session, "totp.html", {"heading": "Verify", "action": "/login/totp"})


async def totp_submit(request: web.Request) -> web.Response:
    session, logins, form = await form_post(request)
    pending = _pending(session, logins, "pending")
    if pending is None:
        return render(
            request,
            session,
            "login.html",
            {"error": "That took too long: enter your password again."},
            status=401,
            headers={"WWW-Authenticate": LOGIN_CHALLENGE},
        )
    proven = await logins.accounts.store.get(str(pending["principal"]))
    # The password was proven a step ago: failures from here on name the whole account.
    who = proven.principal if proven is not None else None
    if not _password_unchanged(logins, pending, proven):
        session.pop("pending", None)
        await logins.record_failure(
            "login.totp", principal=who, client_ip=client_ip(request), reason="password_changed"
        )
        return render(
            request,
            session,
            "login.html",
            {"error": "Your password has changed: enter it again."},
            status=401,
            headers={"WWW-Authenticate": LOGIN_CHALLENGE},
        )
    code = field(form, "code", max_length=10)
    try:
        account = await logins.accounts.login.totp(str(pending["principal"]), code)
    except LoginRefused as exc:
        await logins.record_failure(
            "login.totp", principal=who, client_ip=client_ip(request), reason=exc.error
        )
        if exc.error != "invalid_totp":
            session.pop("pending", None)  # locked or disabled: start again from the password
            return refused(request, session, "login.html", exc)
        return refused(
            request, session, "totp.html", exc, {"heading": "Verify", "action": "/login/totp"}
        )
    established = await establish(request, logins, account, pending["epoch"])
    if isinstance(established, web.Response):
        return established
    failed = await record_login(request, established, logins, account, "console")
    return failed or await proceed(request, established, logins)


async def enrol_page(request: web.Request) -> web.Response:
    session = await get_session(request)
    return render(request, session, "enrol.html")


async def enrol_submit(request: web.Request) -> web.Response:
    session, logins, form = await form_post(request)
    email = field(form, "email", max_length=254)
    password = field(form, "password", max_length=MAX_PASSWORD)
    token = field(form, "token", max_length=128)
    try:
        proven = await logins.password(email, password, client_ip(request), action="enrol.password")
    except LoginRefused as exc:
        return refused(request, session, "enrol.html", exc, {"email": email})
    account = proven.account
    started = await logins.accounts.enrolment.begin(token.strip(), account.key)
    if started is None:
        await logins.record_failure(
            "enrol.token",
            principal=account.principal,
            client_ip=client_ip(request),
            reason="invalid_token",
        )
        return render(
            request,
            session,
            "enrol.html",
            {
                "error": "The enrolment token is wrong, used or expired: ask your administrator "
                "for a new one.",
                "email": email,
            },
            status=403,
        )
    digest, secret = started
    session["enrol"] = {
        "principal": account.key,
        "token_hash": digest,
        "at": logins.clock.now(),
        "proof": _password_proof(logins, account),
        "epoch": proven.session_epoch,
    }
    uri = provisioning_uri(secret, account.principal.email, ISSUER)
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="svg", scale=5, xmldecl=False, svgns=True)
    # The SVG is geometry drawn by segno; no input text is copied into it.
    svg = Markup(buffer.getvalue().decode("utf-8"))  # noqa: S704
    return render(
        request, session, "enrol_confirm.html", {"qr_svg": svg, "secret": secret, "uri": uri}
    )


async def enrol_confirm(request: web.Request) -> web.Response:
    session, logins, form = await form_post(request)
    pending = _pending(session, logins, "enrol")
    if pending is None:
        return render(
            request,
            session,
            "enrol.html",
            {"error": "That took too long: start the enrolment again."},
            status=403,
        )
    code = field(form, "code", max_length=10)
    key = str(pending["principal"])
    current = await logins.accounts.store.get(key)
    who = current.principal if current is not None else None
    if current is None or current.disabled:
        # SECURITY: disabled while enrolling (the password was checked a step ago): no login.
        session.pop("enrol", None)
        await logins.record_failure(
            "enrol.code", principal=who, client_ip=client_ip(request), reason="account_disabled"
        )
        return render(
            request, session, "enrol.html", {"error": "This account is disabled."}, status=403
        )
    if not _password_unchanged(logins, pending, current):
        session.pop("enrol", None)
        await logins.record_failure(
            "enrol.code", principal=who, client_ip=client_ip(request), reason="password_changed"
        )
        return render(
            request,
            session,
            "enrol.html",
            {"error": "Your password has changed: start the enrolment again."},
            status=403,
        )
    if not await logins.accounts.enrolment.complete(str(pending["token_hash"]), key, code):
        await logins.record_failure(
            "enrol.code", principal=who, client_ip=client_ip(request), reason="invalid_totp"
        )
        return render(
            request,
            session,
            "enrol_confirm.html",
            {"error": "That code is wrong, expired or already used: try the next one."},
            status=401,
            headers={"WWW-Authenticate": LOGIN_CHALLENGE},
        )
    account = await logins.accounts.store.require(key)
    try:
        await logins.record(
            "enrolment",
            outcome="success",
            principal=account.principal,
            client_ip=client_ip(request),
        )
    except Exception:
        log.exception("enrolment of %s could not be recorded", key)
    established = await establish(request, logins, account, pending["epoch"])
    if isinstance(established, web.Response):
        return established
    failed = await record_login(request, established, logins, account, "enrolment")
    return failed or await proceed(request, established, logins)


async def step_up_page(request: web.Request) -> web.Response:
    session = await get_session(request)
    logins = logins_of(request.config_dict)
    remember_destination(request, session, logins)
    login = current_login(session)
    if login is None:
        return see_other("/login")
    return render(
        request,
        session,
        "totp.html",
        {
            "heading": "Confirm it is you",
            "action": "/step-up",
            "note": "Your last code was a while ago: enter a fresh one to continue.",
        },
    )


async def step_up_submit(request: web.Request) -> web.Response:
    session, logins, form = await form_post(request)
    login = current_login(session)
    if login is None:
        return see_other("/login")
    code = field(form, "code", max_length=10)
    context = {"heading": "Confirm it is you", "action": "/step-up"}
    try:
        account = await logins.accounts.login.totp(login.principal_key, code)
    except LoginRefused as exc:
        stepping = await logins.accounts.store.get(login.principal_key)
        await logins.record_failure(
            "mfa.step_up",
            principal=stepping.principal if stepping is not None else None,
            client_ip=client_ip(request),
            reason=exc.error,
            session_id=login.session_id,
        )
        if exc.error != "invalid_totp":
            await end(request)
        return refused(request, session, "totp.html", exc, context)
    try:
        await logins.record(
            "mfa.step_up",
            outcome="success",
            principal=account.principal,
            client_ip=client_ip(request),
            session_id=login.session_id,
        )
    except Exception:
        return render(
            request,
            session,
            "totp.html",
            {**context, "error": "The audit trail is unavailable; try again."},
            status=503,
            headers={"Retry-After": "5"},
        )
    session["mfa_at"] = logins.clock.now()
    return await proceed(request, session, logins)


async def logout_page(request: web.Request) -> web.Response:
    session = await get_session(request)
    return render(
        request, session, "logout.html", {"logged_in": current_login(session) is not None}
    )


async def logout_submit(request: web.Request) -> web.Response:
    session, logins, _ = await form_post(request)
    login = current_login(session)
    await end(request)
    if login is not None:
        account = await logins.accounts.store.get(login.principal_key)
        try:
            await logins.record(
                "logout",
                outcome="success",
                principal=account.principal if account else None,
                client_ip=client_ip(request),
                session_id=login.session_id,
            )
        except Exception:
            # The logout itself has happened; a lost record of it is logged, not undone.
            log.exception("logout of %s could not be recorded", login.principal_key)
    return render(request, await get_session(request), "logout.html", {"logged_in": False})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_submit)
    app.router.add_get("/login/totp", totp_page)
    app.router.add_post("/login/totp", totp_submit)
    app.router.add_get("/enrol", enrol_page)
    app.router.add_post("/enrol", enrol_submit)
    app.router.add_post("/enrol/confirm", enrol_confirm)
    app.router.add_get("/step-up", step_up_page)
    app.router.add_post("/step-up", step_up_submit)
    app.router.add_get("/logout", logout_page)
    app.router.add_post("/logout", logout_submit)
