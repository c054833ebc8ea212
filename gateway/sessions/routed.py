"""The hand-off's routed-host side: `/.gateway/auth` and `/.gateway/logout`, and the way
back to the console for a flow that has no (or a stale) login.

    GET /.gateway/auth?code=…   redeem a one-time hand-off code made for THIS host and THIS
                                browser (its `__Host-gw_handoff` nonce), set the host-only
                                app-session cookie, 303 to where the user was going
    GET|POST /.gateway/logout   end this host's app session (and so its open streams and
                                websockets), 303 to the console's logout

The `__Host-gw_handoff` nonce is kept after a hand-off, until it expires: it only binds
codes to this browser (each code is single-use and lives seconds anyway), and every tab
of the browser that was sent to log in shares it, so a second tab's hand-off, coming
back after the first one's, must still find it. Deleting it would leave that tab a 403.

Nothing here ever reaches the customer application (the route stage answers these
paths itself).
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

from aiohttp import web

from gateway.appkeys import RoutedEndpoint
from gateway.cookies import APP_SESSION, HANDOFF_BINDING
from gateway.denials import Denial, denial_response, method_not_allowed, wants_html
from gateway.flow import Flow
from gateway.sessions.handoff import RETURN_TTL_S, browser_nonce, default_port
from gateway.sessions.logins import Logins, logins_of
from gateway.sessions.prelogin import MAX_DESTINATION
from gateway.stages.route import split_host

CHALLENGE = 'Cookie realm="gateway"'


def _host(request: web.Request) -> str:
    parsed = split_host(request.headers.get("Host", ""))
    return parsed[0] if parsed else ""


def addressed_port(request: web.Request) -> int:
    """The port the browser addressed: `Host`'s, or its scheme's default (0 if unreadable)."""
    parsed = split_host(request.headers.get("Host", ""))
    if parsed is None:
        return 0
    return int(parsed[1]) if parsed[1] else default_port("https" if request.secure else "http")


def _redirect(location: str) -> web.Response:
    return web.Response(
        status=303,
        headers={
            "Location": location,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


async def auth(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return denial_response(method_not_allowed(request.method, "GET, HEAD"), request)
    logins = logins_of(request.config_dict)
    host = _host(request)
    code = request.query.get("code", "")
    grant = await logins.codes.redeem(
        code, host, request.cookies.get(HANDOFF_BINDING), port=addressed_port(request)
    )
    if grant is None:
        return denial_response(
            Denial(
                403,
                "invalid_handoff",
                "This sign-in link was already used, has expired or belongs to another site. "
                "Go back to the page you wanted and try again.",
            ),
            request,
        )
    token = secrets.token_urlsafe(32)
    if not await logins.app_sessions.create(token, grant.session_id, grant.principal_key, host):
        return denial_response(
            Denial(403, "session_ended", "Your gateway login has ended; log in again."), request
        )
    response = _redirect(grant.target)
    # SECURITY: host-only (__Host-, no Domain), HTTPS-only, invisible to the app's scripts.
    response.set_cookie(
        APP_SESSION,
        token,
        path="/",
        secure=True,
        httponly=True,
        samesite="Lax",
        max_age=logins.config.sessions.absolute_lifetime_s,
    )
    # The nonce stays (see the module docstring): other tabs' hand-offs still need it.
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    logins = logins_of(request.config_dict)
    await logins.app_sessions.end(request.cookies.get(APP_SESSION))
    response = _redirect(f"{logins.config.console_url}/logout")
    response.del_cookie(APP_SESSION, path="/", secure=True, httponly=True, samesite="Lax")
    return response


def endpoints() -> dict[str, RoutedEndpoint]:
    return {"auth": auth, "logout": logout}


def _return_address(logins: Logins, netloc: str, target: str, binding: str) -> str:
    """The signed way back to `target`, or to less of it when the whole would not fit in
    the pre-login state (the console refuses a longer one): its path, else the root."""
    path = target.split("?", 1)[0]
    for candidate in (target, path, "/"):
        signed = logins.addresses.sign(f"https://{netloc}{candidate}", binding=binding)
        if len(signed) <= MAX_DESTINATION:
            break
    return signed


def to_console(flow: Flow, logins: Logins, page: str, error: str, reason: str) -> Denial:
    """Send a browser to a console page (and back here afterwards); API clients get 401."""
    if not wants_html(flow.request.headers.get("Accept", "")):
        return Denial(401, error, reason, {"WWW-Authenticate": CHALLENGE})
    target = flow.raw_path + (f"?{flow.query}" if flow.query else "")
    if not target.startswith("/"):
        target = "/"
    parsed = split_host(flow.request.headers.get("Host", ""))
    port = parsed[1] if parsed else ""
    netloc = flow.host + (f":{port}" if port.isdigit() else "")
    # The browser keeps its nonce across redirects (several tabs share one), so any of
    # its hand-offs completes in it, and in no other browser.
    nonce, binding = browser_nonce(flow.request.cookies.get(HANDOFF_BINDING))
    signed = _return_address(logins, netloc, target, binding)
    location = f"{logins.config.console_url}/{page}?return={quote(signed, safe='')}"
    # SECURITY: host-only (__Host-, no Domain), HTTPS-only, invisible to the app's scripts.
    cookie = (
        f"{HANDOFF_BINDING}={nonce}; Max-Age={RETURN_TTL_S}; Path=/; Secure; HttpOnly; SameSite=Lax"
    )
    headers = {"Location": location, "Cache-Control": "no-store", "Set-Cookie": cookie}
    return Denial(303, error, reason, headers)
