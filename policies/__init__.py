"""The routing-policy language: load YAML, validate, compile to frozen objects, decide.

Pure: no I/O after load, no aiohttp, never imports `gateway`.

    policy_set = load_policy_files(["config/policies/demo.yaml"])
    route = policy_set.route_for("acme.localhost")
    path = route.normalise(raw_path)       # PathRejected -> 400
    decision = decide(route, "GET", path, Scope.READ)
"""

from policies.decide import decide
from policies.errors import PathRejected, PolicyError, PolicyLanguageError
from policies.load import load_policy_files, parse_policy
from policies.model import Decision, Effect, MethodOverride, PolicySet, Route, Rule, Scope
from policies.paths import NormalisedPath, normalise

__all__ = [
    "Decision",
    "Effect",
    "MethodOverride",
    "NormalisedPath",
    "PathRejected",
    "PolicyError",
    "PolicyLanguageError",
    "PolicySet",
    "Route",
    "Rule",
    "Scope",
    "decide",
    "load_policy_files",
    "normalise",
    "parse_policy",
]
