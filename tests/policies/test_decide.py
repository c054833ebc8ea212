"""The decision table: deny overrides allow, defaults, methods, scope, readings, glob speed."""

from __future__ import annotations

import time

import pytest

from policies.decide import decide
from policies.load import parse_policy
from policies.model import Scope
from policies.paths import normalise

POLICY = """
routes:
  - name: deny-default
    hosts: [dd.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: deny
    rules:
      - allow: {prefix: /api}
      - allow: {path: /, methods: [GET]}
      - allow: {glob: "/static/*.css", methods: [GET, HEAD]}
      - allow: {glob: "/docs/**/index.html"}
      - allow: {glob: "/v?/ping"}
      - deny: {prefix: /api/admin}
      - deny: {path: /api/users, methods: [DELETE]}
  - name: allow-default
    hosts: [ad.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: allow
    rules:
      - deny: {glob: "/**.bak"}
      - allow: {prefix: /reports}
      - deny: {prefix: /reports/secret}
"""

ROUTES = {r.name: r for r in parse_policy(POLICY, "d.yaml").routes}

# (route, method, path, scope, allowed, deciding rule's line or None)
TABLE: list[tuple[str, str, str, Scope, bool, int | None]] = [
    ("deny-default", "GET", "/api", Scope.WRITE, True, 9),
    ("deny-default", "GET", "/api/", Scope.WRITE, True, 9),
    ("deny-default", "POST", "/api/users", Scope.WRITE, True, 9),
    ("deny-default", "DELETE", "/api/users", Scope.WRITE, False, 15),
    ("deny-default", "delete", "/api/users", Scope.WRITE, False, 15),
    ("deny-default", "DELETE", "/api/users/7", Scope.WRITE, True, 9),
    ("deny-default", "GET", "/api/admin", Scope.WRITE, False, 14),
    ("deny-default", "GET", "/api/admin/x", Scope.READ, False, 14),
    ("deny-default", "GET", "/api/administrators", Scope.WRITE, True, 9),
    ("deny-default", "GET", "/apix", Scope.WRITE, False, None),
    ("deny-default", "GET", "/", Scope.WRITE, True, 10),
    ("deny-default", "POST", "/", Scope.WRITE, False, None),
    ("deny-default", "GET", "/static/site.css", Scope.READ, True, 11),
    ("deny-default", "GET", "/static/css/site.css", Scope.READ, False, None),
    ("deny-default", "GET", "/docs/index.html", Scope.READ, True, 12),
    ("deny-default", "GET", "/docs/a/b/index.html", Scope.READ, True, 12),
    ("deny-default", "GET", "/docs/aindex.html", Scope.READ, False, None),
    ("deny-default", "GET", "/v1/ping", Scope.READ, True, 13),
    ("deny-default", "GET", "/v10/ping", Scope.READ, False, None),
    ("deny-default", "GET", "/nothing", Scope.WRITE, False, None),
    ("deny-default", "POST", "/api/users", Scope.READ, False, None),
    ("deny-default", "PUT", "/api/x", Scope.READ, False, None),
    ("deny-default", "HEAD", "/api/x", Scope.READ, True, 9),
    ("deny-default", "OPTIONS", "/api/x", Scope.READ, True, 9),
    ("deny-default", "get", "/api/x", Scope.READ, False, None),
    ("allow-default", "GET", "/anything", Scope.WRITE, True, None),
    ("allow-default", "POST", "/anything", Scope.READ, False, None),
    ("allow-default", "GET", "/db.bak", Scope.WRITE, False, 22),
    ("allow-default", "GET", "/a/b/db.bak", Scope.WRITE, False, 22),
    ("allow-default", "GET", "/reports/q1", Scope.WRITE, True, 23),
    ("allow-default", "GET", "/reports/secret/q1", Scope.WRITE, False, 24),
    ("allow-default", "GET", "/reports/q1.bak", Scope.WRITE, False, 22),
]


@pytest.mark.parametrize(("route", "method", "path", "scope", "allowed", "line"), TABLE)
def test_decision_table(
    route: str, method: str, path: str, scope: Scope, allowed: bool, line: int | None
) -> None:
    decision = decide(ROUTES[route], method, normalise(path), scope)
    assert decision.allowed is allowed, decision.reason
    assert (decision.rule.source if decision.rule else None) == (f"d.yaml:{line}" if line else None)


def test_reasons_name_what_decided() -> None:
    route = ROUTES["deny-default"]
    assert decide(route, "POST", normalise("/api/x"), Scope.READ).reason == (
        "a read grant permits only GET, HEAD and OPTIONS, not POST"
    )
    assert decide(route, "GET", normalise("/nothing"), Scope.WRITE).reason == (
        "no rule matched; route deny-default default is deny"
    )
    assert decide(route, "GET", normalise("/api/admin"), Scope.WRITE).reason == (
        "denied by rule at d.yaml:14: deny prefix /api/admin (any method)"
    )
    assert decide(route, "GET", normalise("/api"), Scope.WRITE).reason == (
        "allowed by rule at d.yaml:9: allow prefix /api (any method)"
    )


def test_a_denied_reading_denies_and_says_which() -> None:
    decision = decide(ROUTES["deny-default"], "GET", normalise("/api/admin;v=1/x"), Scope.WRITE)
    assert not decision.allowed
    assert decision.reason.endswith("(as some upstreams read the path: /api/admin/x)")


def test_string_paths_are_resolved_before_judging() -> None:
    route = ROUTES["deny-default"]
    assert not decide(route, "GET", "/api/x/../admin", Scope.WRITE).allowed
    assert not decide(route, "GET", "/api/admin;x", Scope.WRITE).allowed
    assert decide(route, "GET", "/api/100%", Scope.WRITE).allowed
    refused = decide(route, "GET", "api", Scope.WRITE)
    assert not refused.allowed
    assert refused.reason == "path refused: path must start with '/'"


def test_trailing_slash_never_escapes_a_rule() -> None:
    text = POLICY.replace('"/**.bak"', '"/private/*"')
    route = parse_policy(text.replace("{prefix: /reports/secret}", "{path: /x}"), "d.yaml").routes[
        1
    ]
    for raw in ("/private/", "/private/a", "/private/a/", "/x/", "/x"):
        assert not decide(route, "GET", normalise(raw), Scope.WRITE).allowed, raw
    assert decide(route, "GET", normalise("/private"), Scope.WRITE).allowed


def test_unknown_scope_string_counts_as_read() -> None:
    decision = decide(ROUTES["allow-default"], "POST", normalise("/x"), "admin")  # type: ignore[arg-type]
    assert not decision.allowed


def test_glob_matching_is_linear_on_hostile_paths() -> None:
    route = parse_policy(
        POLICY.replace('"/**.bak"', '"/**/**/**/**/*a*a*a*a*a*b"'), "d.yaml"
    ).routes[1]
    path = normalise("/" + "a/" * 900 + "a" * 2000)
    started = time.perf_counter()
    decision = decide(route, "GET", path, Scope.WRITE)
    assert time.perf_counter() - started < 5.0
    assert decision.allowed


HEAD_POLICY = """
routes:
  - name: head
    hosts: [head.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: allow
    rules:
      - deny: {prefix: /export, methods: [GET]}
      - deny: {prefix: /reports, methods: [post]}
"""


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/export/all", False),
        # Upstreams answer HEAD with their GET handler (it runs, only the body is dropped):
        # a rule naming GET covers HEAD, or HEAD would run what the rule denies.
        ("HEAD", "/export/all", False),
        ("head", "/export/all", False),
        ("OPTIONS", "/export/all", True),
        ("HEAD", "/reports", True),
        ("POST", "/reports", False),
    ],
)
def test_a_rule_naming_get_covers_head(method: str, path: str, allowed: bool) -> None:
    route = parse_policy(HEAD_POLICY, "h.yaml").routes[0]
    assert decide(route, method, normalise(path), Scope.WRITE).allowed is allowed
