"""The policy stage: the route's rules and the grant's scope judge method and path.

No grant means no forwarding (`no_grant`): until the session and grant stages have
authorised a flow, every proxied request is denied here. The path judged is the
normalised path the forwarder sends; every reading an upstream might give it must be
allowed (deny overrides allow). Likewise every method: a POST whose query carries
`_method=DELETE` is judged as a DELETE as well, and so, on a route with
`method_override: body`, is one whose form body carries it (read ahead, within a bound, by
`gateway.proxy.form_override`; with the setting off no body is read). A `read` grant
never opens a websocket: its messages could write whatever the upgrade's GET was allowed
to read.

Decisions are remembered per (route object, method, readings, scope): see
`RememberedDecisions`.
"""

from __future__ import annotations

from collections import OrderedDict

from aiohttp import web

from gateway.denials import Denial
from gateway.flow import Flow
from gateway.proxy.form_override import (
    FormUnparseable,
    form_kind,
    read_form,
    unparseable,
    urlencoded_overrides,
)
from policies.decide import decide
from policies.model import Decision, MethodOverride, Route, Scope

REMEMBERED_DECISIONS = 2048
REMEMBERED_KEY_CHARS = 2048


def judge_readings(route: Route, method: str, keys: tuple[str, ...], scope: Scope) -> Decision:
    """Every reading of one path judged; the first denial wins, else the last allowance."""
    decision: Decision | None = None
    for key in keys:
        decision = decide(route, method, key, scope)
        if not decision.allowed:
            break
    if decision is None:
        # SECURITY: no reading to judge is no permission (normalise always gives one).
        return Decision(False, None, "the path has no reading to judge")
    return decision


class RememberedDecisions:
    """A bounded LRU of `judge_readings` results.

    Safe because `decide` is a pure function of its arguments and every argument is in
    the key: the route by identity (a `Route` is frozen, its rules are frozen tuples, and
    a policy reload builds new objects, so a reloaded route is a new key; the entry holds
    the route itself, so its id cannot be reused by another object while remembered),
    the method, every reading and the scope. Bounded by entry count and by the length of
    what a key holds, so distinct hostile methods and paths only evict each other.
    """

    def __init__(self, size: int = REMEMBERED_DECISIONS) -> None:
        self.size = size
        self._entries: OrderedDict[
            tuple[int, str, tuple[str, ...], Scope], tuple[Route, Decision]
        ] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def decision(self, route: Route, method: str, keys: tuple[str, ...], scope: Scope) -> Decision:
        key = (id(route), method, keys, scope)
        found = self._entries.get(key)
        if found is not None and found[0] is route:
            self._entries.move_to_end(key)
            return found[1]
        decision = judge_readings(route, method, keys, scope)
        if len(method) + sum(map(len, keys)) <= REMEMBERED_KEY_CHARS:
            self._entries[key] = (route, decision)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return decision


MAX_OVERRIDES = 4


def method_overrides(method: str, query: str) -> tuple[str, ...]:
    """The methods a POST's `_method` query parameters ask the upstream to take it for.

    Symfony reads `_method` from the query as well as the form body, and method-override
    middleware can be set to; the headers that do the same are dropped by the inject
    stage, but the query passes as received. A query is read as the form body is (pairs
    split at `&` and `;`, see `urlencoded_overrides`), and the method compared as Symfony
    does, upper-cased. (Form bodies: `form_body_overrides`.)
    """
    if not query or method.upper() != "POST":
        return ()  # nearly every request: nothing to parse
    # The raw target's own bytes (aiohttp keeps undecodable ones as surrogates).
    found = urlencoded_overrides(query.encode("utf-8", "surrogateescape"))
    return tuple(dict.fromkeys(found))


async def form_body_overrides(flow: Flow, route: Route) -> tuple[str, ...] | Denial:
    """The `_method` values of a POST's form body, read ahead whole into the flow (the
    forwarder sends those bytes); a Denial when the body cannot be read or judged.

    Only for routes with `method_override: body`; a body no application reads as a form
    (JSON, a file of another type) is not read.
    """
    try:
        kind = form_kind(flow.request)
    except FormUnparseable as exc:
        return unparseable(str(exc))
    if kind is None:
        return ()
    read = await read_form(flow.request, kind, route.timeouts.read_s)
    if isinstance(read, Denial):
        return read
    flow.request_body_ahead = read.body
    return read.overrides


def asks_for_websocket(request: web.BaseRequest) -> bool:
    """`Upgrade: websocket` with `Connection: upgrade`, whatever the method."""
    upgrade = request.headers.get("Upgrade")
    if upgrade is None:
        return False  # most requests: nothing to parse
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in [t.strip() for t in connection.split(",")] and (
        upgrade.strip().lower() == "websocket"
    )


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """A websocket opening the forwarder relays: only ever a GET.

    SECURITY: the upstream handshake is always a GET, so an upgrade asked by any other
    method would be judged as that method and reach the upstream as a GET (the route stage
    refuses such requests; this keeps the forwarder from ever relaying one).
    """
    return request.method == "GET" and asks_for_websocket(request)


class PolicyCheck:
    name = "policy"

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.decisions = RememberedDecisions()

    def _judge_overrides(
        self,
        decision: Decision,
        route: Route,
        keys: tuple[str, ...],
        scope: Scope,
        overrides: list[tuple[str, str]],
    ) -> Decision:
        """`decision` unless one of the `_method` overrides (method, where it was asked
        for) is denied, or there are too many to judge."""
        if len({m for m, _where in overrides}) > MAX_OVERRIDES:
            # No application asks for several: judging thousands would only cost time.
            return Decision(False, None, "too many _method overrides")
        for method, where in overrides:
            # SECURITY: each method an upstream may take the request for is judged too.
            overridden = self.decisions.decision(route, method, keys, scope)
            if not overridden.allowed:
                return Decision(
                    False,
                    overridden.rule,
                    f"{overridden.reason} ({where} makes this POST a {method})",
                )
        return decision

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
        decision = self.decisions.decision(route, flow.method, keys, grant.scope)
        # (method, where it was asked for), for the reason given
        overrides = [(m, f"?_method={m}") for m in method_overrides(flow.method, flow.query)]
        if overrides:
            decision = self._judge_overrides(decision, route, keys, grant.scope, overrides)
        # Symfony upper-cases the method before asking whether it is a POST: so does this.
        reads_form = route.method_override is MethodOverride.BODY and flow.method.upper() == "POST"
        if reads_form and decision.allowed:
            # Only now, once nothing else refuses it, is the body asked for (100-continue).
            from_body = await form_body_overrides(flow, route)
            if isinstance(from_body, Denial):
                # SECURITY: a form body that cannot be judged is never forwarded unjudged.
                flow.decision = Decision(False, None, from_body.reason)
                flow.deny(from_body)
                return
            if from_body:
                overrides += [(m, f"_method={m} in the form body") for m in from_body]
                decision = self._judge_overrides(decision, route, keys, grant.scope, overrides)
        flow.decision = decision
        if not decision.allowed:
            flow.deny(Denial(403, "policy_denied", decision.reason))
            return
        if grant.scope is Scope.READ and is_websocket_upgrade(flow.request):
            flow.decision = Decision(False, None, "a read grant cannot open a websocket")
            flow.deny(Denial(403, "policy_denied", "A read grant cannot open a websocket."))
