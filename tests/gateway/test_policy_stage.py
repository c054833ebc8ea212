"""The policy stage's remembered decisions: the computed answer, keyed by all it depends on."""

from __future__ import annotations

from gateway.stages.policy import (
    REMEMBERED_KEY_CHARS,
    RememberedDecisions,
    judge_readings,
    method_overrides,
)
from policies.load import parse_policy
from policies.model import Route, Scope
from policies.paths import normalise

POLICY = """
routes:
  - name: app
    hosts: [app.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: {default}
    rules:
      - allow: {{prefix: /api}}
      - deny: {{prefix: /api/admin}}
      - deny: {{path: /api/users, methods: [DELETE]}}
"""


def _route(default: str = "deny") -> Route:
    return parse_policy(POLICY.format(default=default), "p.yaml").routes[0]


def _keys(raw: str) -> tuple[str, ...]:
    return normalise(raw).match_keys


def test_remembered_decisions_are_the_computed_ones() -> None:
    route, decisions = _route(), RememberedDecisions()
    cases = [
        ("GET", "/api/x", Scope.READ),
        ("GET", "/api/admin/x", Scope.WRITE),
        ("DELETE", "/api/users", Scope.WRITE),
        ("DELETE", "/api/users", Scope.READ),
        ("POST", "/other", Scope.WRITE),
        ("GET", "/api/x;/admin", Scope.WRITE),
    ]
    for _ in range(2):  # computed, then remembered
        for method, raw, scope in cases:
            expected = judge_readings(route, method, _keys(raw), scope)
            assert decisions.decision(route, method, _keys(raw), scope) == expected
    assert len(decisions) == len(cases)


def test_method_and_scope_are_part_of_the_key() -> None:
    route, decisions = _route(), RememberedDecisions()
    keys = _keys("/api/users")
    assert decisions.decision(route, "GET", keys, Scope.WRITE).allowed
    assert not decisions.decision(route, "DELETE", keys, Scope.WRITE).allowed
    assert not decisions.decision(route, "POST", keys, Scope.READ).allowed
    assert decisions.decision(route, "POST", keys, Scope.WRITE).allowed


def test_a_reloaded_route_is_judged_by_its_own_rules() -> None:
    decisions = RememberedDecisions()
    keys = _keys("/elsewhere")
    old = _route("allow")
    assert decisions.decision(old, "GET", keys, Scope.WRITE).allowed
    # A reload builds new route objects: the old answer is never handed to the new route.
    new = _route("deny")
    assert not decisions.decision(new, "GET", keys, Scope.WRITE).allowed
    assert decisions.decision(old, "GET", keys, Scope.WRITE).allowed


def test_every_reading_is_in_the_key() -> None:
    route, decisions = _route(), RememberedDecisions()
    assert decisions.decision(route, "GET", ("/api/x",), Scope.WRITE).allowed
    # Same first reading, one more reading that a deny rule covers: denied.
    denied = decisions.decision(route, "GET", ("/api/x", "/api/admin"), Scope.WRITE)
    assert not denied.allowed
    assert "/api/admin" in denied.reason


def test_remembered_decisions_are_bounded_under_distinct_hostile_input() -> None:
    route, decisions = _route(), RememberedDecisions(size=16)
    for index in range(200):
        method = f"M{index}" if index % 2 else "GET"
        decisions.decision(route, method, (f"/api/{index}",), Scope.WRITE)
    assert len(decisions) == 16
    huge = ("/api/" + "a" * REMEMBERED_KEY_CHARS,)
    assert decisions.decision(route, "GET", huge, Scope.WRITE).allowed
    assert len(decisions) == 16
    fresh = RememberedDecisions()
    fresh.decision(route, "GET", huge, Scope.WRITE)
    assert len(fresh) == 0  # too long to keep


def test_least_recently_used_is_evicted_first() -> None:
    route, decisions = _route(), RememberedDecisions(size=2)
    first, second, third = ("/api/1",), ("/api/2",), ("/api/3",)
    decisions.decision(route, "GET", first, Scope.WRITE)
    decisions.decision(route, "GET", second, Scope.WRITE)
    decisions.decision(route, "GET", first, Scope.WRITE)  # now the most recent
    decisions.decision(route, "GET", third, Scope.WRITE)
    assert len(decisions) == 2
    kept = {key[2] for key in decisions._entries}
    assert kept == {first, third}


def test_query_overrides_are_read_as_form_bodies_are_for_a_post_in_any_case() -> None:
    # Symfony upper-cases the request method before asking whether it is a POST.
    assert method_overrides("post", "_method=delete") == ("DELETE",)
    assert method_overrides("POST", "a=1;_method=PUT&%5Fmethod=put&_method[]=patch") == (
        "PUT",
        "PATCH",
    )
    # a raw byte that is not UTF-8 (kept by aiohttp as a surrogate) is read, not raised on
    assert method_overrides("POST", "\udcff=1&_method=DELETE") == ("DELETE",)
    assert method_overrides("GET", "_method=DELETE") == ()
    assert method_overrides("POST", "") == ()
