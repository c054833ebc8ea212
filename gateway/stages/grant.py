"""The grant stage: the live grant for (principal, route org), checked on EVERY request.

The check goes to Redis unless the grant watcher's cache may answer (only while its
pub/sub subscription is healthy); either way the Clock judges the grant's times now.
No grant, a pending request, an expired or a revoked grant each end the flow with a
clear denial (`no_grant`, `grant_expired`, `grant_revoked`); Redis down means 503.
A granted flow joins the app's in-flight set at once (the app drops it when the flow
ends), so a revocation from here on aborts it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.access.errors import AccessUnavailable
from gateway.access.service import access_service
from gateway.appkeys import IN_FLIGHT
from gateway.denials import Denial
from gateway.flow import Flow


class GrantLookup:
    name = "grant"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        route, principal = flow.route, flow.principal
        if route is None or principal is None:
            # SECURITY: fail closed if the route or session stage did not run.
            flow.deny(Denial(403, "no_grant", "There is no approved access to this application."))
            return
        try:
            result = await access_service(self.app).watcher.check(principal.key, route.org)
        except AccessUnavailable:
            flow.deny(
                Denial(
                    503,
                    "unavailable",
                    "Access cannot be checked right now; try again shortly.",
                    {"Retry-After": "1"},
                )
            )
            return
        if result.grant is None:
            flow.deny(
                Denial(
                    403, result.error or "no_grant", _REASONS.get(result.error or "", result.reason)
                )
            )
            return
        # SECURITY: the grant checked is for this route's org and this principal only.
        if result.grant.org != route.org or result.grant.actor.key != principal.key:
            flow.deny(Denial(403, "no_grant", "There is no approved access to this application."))
            return
        flow.grant = result.grant
        # SECURITY: in flight from the moment the grant authorises it, so that a revocation
        # heard before the forwarder contacts the upstream still ends this flow.
        self.app[IN_FLIGHT].add(flow)


_REASONS = {
    "no_grant": "There is no approved access to this application now. Request access in the "
    "console; it starts once approved.",
    "grant_expired": "Your approved access to this application has expired. Request access "
    "again in the console.",
    "grant_revoked": "Your access to this application was revoked.",
}
