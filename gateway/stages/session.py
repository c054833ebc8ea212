"""The session stage: the host-only app-session cookie -> who is asking (flow.principal).

No valid app session for THIS host (none, forged, expired, for another host, its
console login ended, the account disabled or all its sessions ended) -> browsers are
sent to the console's login with a signed return address; API clients get 401
`login_required` with `WWW-Authenticate`. A console cookie sent here means nothing.
"""

from __future__ import annotations

from aiohttp import web

from gateway.cookies import APP_SESSION
from gateway.flow import Flow
from gateway.sessions.logins import logins_of
from gateway.sessions.routed import to_console


class SessionCheck:
    name = "session"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        logins = logins_of(self.app)
        # SECURITY: only the app-session cookie counts, and only on the host it was made for.
        # One Redis round trip: app session, console session, session epoch and account.
        found = await logins.app_sessions.lookup(flow.request.cookies.get(APP_SESSION), flow.host)
        if found is None:
            flow.deny(
                to_console(flow, logins, "login", "login_required", "Log in to the gateway first.")
            )
            return
        flow.principal = found.principal
        flow.console_session_id = found.session_id
        flow.app_session_id = found.app_session_id
        flow.mfa_verified_at = found.mfa_at
