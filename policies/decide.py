"""Judge one request against a route: pure, no I/O.

    decision = decide(route, "POST", normalise(raw, ...), Scope.WRITE)

Order: a `read` grant permits only GET, HEAD and OPTIONS whatever the rules say; then,
for every reading of the path (`NormalisedPath.match_keys`), a matching deny rule
anywhere wins over any matching allow rule, and when no rule matches the route default
applies. The request is allowed only if every reading is allowed.
"""

from __future__ import annotations

from policies.errors import PathRejected
from policies.model import READ_METHODS, Decision, Effect, Route, Rule, Scope
from policies.paths import NormalisedPath, readings_of_key


def decide(route: Route, method: str, path: NormalisedPath | str, scope: Scope) -> Decision:
    """The decision for `method path` on `route` under a grant of `scope`.

    `path` is a `NormalisedPath`, or a decoded path string such as one of its
    `match_keys`: a string is resolved again and every reading of it is judged (see
    `readings_of_key`); a string that is refused gives a denial, never an error.
    """
    if scope != Scope.WRITE and method not in READ_METHODS:
        # SECURITY: read scope caps every rule; unknown scopes count as read.
        return Decision(
            allowed=False,
            rule=None,
            reason=f"a read grant permits only GET, HEAD and OPTIONS, not {method}",
        )
    try:
        keys = (
            readings_of_key(path, case_insensitive=route.case_insensitive)
            if isinstance(path, str)
            else path.match_keys
        )
    except PathRejected as exc:
        return Decision(allowed=False, rule=None, reason=f"path refused: {exc.reason}")
    first: Decision | None = None
    for index, key in enumerate(keys):
        decision = _judge(route, method, key)
        if not decision.allowed:
            if index == 0:
                return decision
            # SECURITY: a reading some upstream might take (';' cut, %2F decoded, NFKC) is denied.
            return Decision(
                allowed=False,
                rule=decision.rule,
                reason=f"{decision.reason} (as some upstreams read the path: {key})",
            )
        first = first or decision
    if first is None:  # normalise always yields at least one reading; fail closed regardless
        return Decision(allowed=False, rule=None, reason="path has no reading to judge")
    return first


def _judge(route: Route, method: str, key: str) -> Decision:
    allowing: Rule | None = None
    for rule in route.rules:
        if not (rule.applies_to(method) and rule.matches(key)):
            continue
        if rule.effect is Effect.DENY:
            return Decision(
                allowed=False,
                rule=rule,
                reason=f"denied by rule at {rule.source}: {rule.describe()}",
            )
        allowing = allowing or rule
    if allowing is not None:
        return Decision(
            allowed=True,
            rule=allowing,
            reason=f"allowed by rule at {allowing.source}: {allowing.describe()}",
        )
    return Decision(
        allowed=route.default is Effect.ALLOW,
        rule=None,
        reason=f"no rule matched; route {route.name} default is {route.default}",
    )
