"""The policy stage: the route's rules and the grant's scope judge method and path.

No grant means no forwarding (`no_grant`): until the session and grant stages have
authorised a flow, every proxied request is denied here. The path judged is the
normalised path the forwarder sends; every reading an upstream might give it must be
allowed (deny overrides allow). A `read` grant never opens a websocket: its messages
could write whatever the upgrade's GET was allowed to read.
"""

from __future__ import annotations

from aiohttp import web

from gateway.denials import Denial
from gateway.flow import Flow
from policies.decide import decide
from policies.model import Decision, Scope


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    connection = request.headers.get("Connection", "").lower()
    upgrade = request.headers.get("Upgrade", "").lower()
    return "upgrade" in [t.strip() for t in connection.split(",")] and upgrade == "websocket"


class PolicyCheck:
    name = "policy"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        route, grant = flow.route, flow.grant
        if route is None or flow.path is None:
            # SECURITY: fail closed if the route stage did not run or was removed.
            flow.deny(Denial(500, "internal_error", "No route was resolved for this request."))
            return
        if grant is None:
            flow.deny(
                Denial(403, "no_grant", "There is no approved access to this application now.")
            )
            return
        if grant.org != route.org:
            # SECURITY: a grant for one org never opens another org's application.
            flow.deny(Denial(403, "no_grant", f"The access granted is not for {route.org}."))
            return
        keys = flow.match_paths or (flow.match_path or flow.path,)
        decision: Decision | None = None
        for key in keys:
            decision = decide(route, flow.method, key, grant.scope)
            if not decision.allowed:
                break
        if decision is None:
            flow.deny(Denial(500, "internal_error", "The policy gave no decision."))
            return
        flow.decision = decision
        if not decision.allowed:
            flow.deny(Denial(403, "policy_denied", decision.reason))
            return
        if grant.scope is Scope.READ and is_websocket_upgrade(flow.request):
            flow.decision = Decision(False, None, "a read grant cannot open a websocket")
            flow.deny(Denial(403, "policy_denied", "A read grant cannot open a websocket."))
