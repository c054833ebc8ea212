"""The MFA stage: the login's last TOTP check must be recent enough for a proxied request.

Older than `sessions.mfa_max_age_s` (by the Clock) -> browsers step up at the console
(one TOTP code) and come back to where they were; API clients get 401 `mfa_required`.
The rule is `records.mfa_fresh`, which the session re-check also applies to open streams.
"""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import CLOCK, CONFIG
from gateway.denials import Denial
from gateway.flow import Flow
from gateway.sessions.logins import logins_of
from gateway.sessions.records import mfa_fresh
from gateway.sessions.routed import CHALLENGE, to_console


class MfaCheck:
    name = "mfa"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        if flow.principal is None or flow.mfa_verified_at is None:
            # SECURITY: fail closed if the session stage did not run or was removed.
            flow.deny(Denial(401, "login_required", "No login.", {"WWW-Authenticate": CHALLENGE}))
            return
        now = self.app[CLOCK].now()
        if not mfa_fresh(flow.mfa_verified_at, now, self.app[CONFIG].sessions):
            flow.deny(
                to_console(
                    flow,
                    logins_of(self.app),
                    "step-up",
                    "mfa_required",
                    "Your last TOTP code was too long ago: confirm it is you to continue.",
                )
            )
