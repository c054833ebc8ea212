"""Path normalisation: accepted spellings, refusals, readings, and hostile paths vs deny rules."""

from __future__ import annotations

import pytest

from policies.decide import decide
from policies.errors import PathRejected
from policies.load import parse_policy
from policies.model import Route, Scope
from policies.paths import (
    MAX_PATH_LENGTH,
    REMEMBERED_PATH_CHARS,
    REMEMBERED_PATHS,
    _normalise,
    _remembered,
    normalise,
    readings_of_key,
)


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//a///b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../c", "/a/c"),
        ("/../../a", "/a"),
        ("/..", "/"),
        ("/%2e%2e/a", "/a"),
        ("/a/%2E/b", "/a/b"),
        ("/a/.%2e/b", "/b"),
        ("/%7euser", "/~user"),
        ("/%41%62c", "/Abc"),
        ("/a%3bb", "/a%3Bb"),
        ("/a;b=c/d", "/a;b=c/d"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/café", "/caf%C3%A9"),
        ("/a b", "/a%20b"),
        ("/a%20b", "/a%20b"),
        ("/Admin", "/Admin"),
        ("/...", "/..."),
        ("/a/..b", "/a/..b"),
        ("/%25", "/%25"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ],
)
def test_normalise_forwarded_form(raw: str, forwarded: str) -> None:
    assert normalise(raw).forwarded == forwarded


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "start with '/'"),
        ("a/b", "start with '/'"),
        ("*", "start with '/'"),
        ("/a%2Fb", "encoded slash"),
        ("/a%2fb", "encoded slash"),
        ("/a%5Cb", "encoded slash or backslash"),
        ("/a\\b", "backslash"),
        ("/a%00b", "NUL"),
        ("/a\x00b", "control character"),
        ("/a\nb", "control character"),
        ("/a%0Ab", "control character"),
        ("/a%7Fb", "control character"),
        ("/a\x85b", "control character"),
        ("/a%C2%85b", "control character"),
        ("/a%", "percent-escape"),
        ("/a%4", "percent-escape"),
        ("/a%zz", "percent-escape"),
        ("/a%%41", "percent-escape"),
        ("/%C0%AE%C0%AE/admin", "UTF-8"),
        ("/%C0%AF", "UTF-8"),
        ("/%E0%80%AE", "UTF-8"),
        ("/%ED%A0%80", "UTF-8"),
        ("/%FF", "UTF-8"),
        ("/caf%C3", "UTF-8"),
        ("/a\udcff", "UTF-8"),
        ("/x/..;/admin", "dot segment with ';'"),
        ("/x/.;a/admin", "dot segment with ';'"),
        ("/x/%2e%2e;/admin", "dot segment with ';'"),
        ("/a?b", "query"),
        ("/a#b", "query"),
        ("/" + "a" * MAX_PATH_LENGTH, "longer than"),
        ("/" + "é" * (MAX_PATH_LENGTH // 2), "once normalised"),
    ],
)
def test_normalise_refuses(raw: str, reason: str) -> None:
    with pytest.raises(PathRejected) as caught:
        normalise(raw)
    assert reason in caught.value.reason


def test_encoded_slashes_allowed_only_when_the_route_says() -> None:
    path = normalise("/files/a%2fb%5cc", allow_encoded_slashes=True)
    assert path.forwarded == "/files/a%2Fb%5Cc"
    assert path.match_key == "/files/a%2Fb%5Cc"
    assert "/files/a/b/c" in path.match_keys


def test_encoded_slash_reading_resolves_dot_segments() -> None:
    path = normalise("/public/..%2F..%2Fadmin", allow_encoded_slashes=True)
    assert "/admin" in path.match_keys


def test_case_folded_only_in_match_keys() -> None:
    path = normalise("/Admin/Ünïcode", case_insensitive=True)
    assert path.forwarded == "/Admin/%C3%9Cn%C3%AFcode"
    assert path.match_key == "/admin/ünïcode"


def test_param_reading_cuts_raw_semicolons_only() -> None:
    assert normalise("/admin;jsessionid=1/x").match_keys == ("/admin;jsessionid=1/x", "/admin/x")
    assert normalise("/admin%3Bx/y").match_keys == ("/admin;x/y",)


def test_nfkc_reading_added_for_compatibility_forms() -> None:
    path = normalise("/%EF%BC%8Fadmin")  # fullwidth solidus
    assert path.match_keys == ("/／admin", "/admin")


def test_idempotent_on_examples() -> None:
    for raw in ("/a/../b//c/%7e", "/caf%c3%a9/", "/x;y/z", "/%2e/"):
        once = normalise(raw)
        assert normalise(once.forwarded) == once


def test_readings_of_key_resolve_hand_written_paths() -> None:
    assert readings_of_key("/x/../admin") == ("/admin",)
    assert readings_of_key("/Admin;x/y", case_insensitive=True) == ("/admin;x/y", "/admin/y")
    with pytest.raises(PathRejected):
        readings_of_key("admin")
    with pytest.raises(PathRejected):
        readings_of_key("/a\x00")


HOSTILE_POLICY = """
routes:
  - name: sensitive
    hosts: [cs.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: allow
    rules:
      - deny: {prefix: /admin}
      - deny: {glob: "/files/**/*.key"}
      - deny: {path: /api/users/delete}
  - name: insensitive
    hosts: [ci.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: allow
    case_insensitive: true
    rules:
      - deny: {prefix: /admin}
      - deny: {glob: "/files/**/*.key"}
      - deny: {path: /api/users/delete}
  - name: slashes
    hosts: [sl.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: allow
    allow_encoded_slashes: true
    rules:
      - deny: {prefix: /admin}
      - deny: {glob: "/files/**/*.key"}
      - deny: {path: /api/users/delete}
"""


def _routes() -> dict[str, Route]:
    policy_set = parse_policy(HOSTILE_POLICY, "hostile.yaml")
    return {r.name: r for r in policy_set.routes}


HOSTILE_PATHS = [
    "/admin",
    "/admin/",
    "/admin/users",
    "//admin",
    "///admin//users",
    "/./admin",
    "/x/../admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/%2e/admin",
    "/x/y/../../admin",
    "/../admin",
    "/%61dmin",
    "/%61%64%6d%69%6e/x",
    "/admin%2Fusers",
    "/x/..%2Fadmin",
    "/x%2F..%2F..%2Fadmin",
    "/x%5C..%5Cadmin",
    "/x\\..\\admin",
    "/admin%00.html",
    "/admin\x00",
    "/%C0%AE%C0%AE/admin",
    "/x/%C0%AE%C0%AE/admin",
    "/admin;x=1",
    "/admin;/users",
    "/x/..;/admin",
    "/;x/admin",
    "/%EF%BC%8Fadmin",
    "/x/%EF%BC%8E%EF%BC%8E/admin",
    "/ａdmin",
    "/files/a/b/secret.key",
    "/files/secret.key",
    "/files//x/./secret.key",
    "/files/x;y/secret.key",
    "/api/users/delete",
    "/api/users/./delete",
    "/api//users/delete",
    "/api/users/delete;x",
    "/api/users/delete/.",
]
CASE_VARIANTS = ["/ADMIN", "/Admin/users", "/aDmIn;x", "/FILES/a/SECRET.KEY", "/API/Users/Delete"]


def _denied_or_refused(route: Route, raw: str) -> bool:
    try:
        path = route.normalise(raw)
    except PathRejected:
        return True
    return not decide(route, "GET", path, Scope.WRITE).allowed


@pytest.mark.parametrize("route_name", ["sensitive", "insensitive", "slashes"])
@pytest.mark.parametrize("raw", HOSTILE_PATHS)
def test_hostile_path_never_slips_past_a_deny_rule(route_name: str, raw: str) -> None:
    assert _denied_or_refused(_routes()[route_name], raw)


@pytest.mark.parametrize("raw", CASE_VARIANTS)
def test_case_variants_denied_where_route_is_case_insensitive(raw: str) -> None:
    assert _denied_or_refused(_routes()["insensitive"], raw)
    # A case-sensitive route judges the exact case: /ADMIN is a different resource there.
    assert decide(_routes()["sensitive"], "GET", normalise(raw), Scope.WRITE).allowed


@pytest.mark.parametrize(
    "raw", ["/", "/administrator", "/public/admin", "/files/a.txt", "/api/users"]
)
def test_ordinary_paths_stay_allowed(raw: str) -> None:
    for route in _routes().values():
        assert not _denied_or_refused(route, raw), (route.name, raw)


# --- remembered results -------------------------------------------------------------------
def test_remembered_result_is_the_computed_one_for_each_option() -> None:
    for raw in ("/Api/./X//y", "/a;b/%2e%2e/C", "/a%2Fb/C", "/caf%C3%A9/ｘ"):
        for slashes in (False, True):
            for folded in (False, True):
                try:
                    fresh = _normalise(raw, slashes, folded, MAX_PATH_LENGTH)
                except PathRejected:
                    with pytest.raises(PathRejected):
                        normalise(raw, allow_encoded_slashes=slashes, case_insensitive=folded)
                    continue
                first = normalise(raw, allow_encoded_slashes=slashes, case_insensitive=folded)
                again = normalise(raw, allow_encoded_slashes=slashes, case_insensitive=folded)
                assert first == fresh
                assert again == fresh


def test_remembered_results_are_keyed_by_every_route_option() -> None:
    # The same raw path first under one option, then the other: never the other's answer.
    assert normalise("/Admin").match_key == "/Admin"
    assert normalise("/Admin", case_insensitive=True).match_key == "/admin"
    assert normalise("/Admin").match_key == "/Admin"
    assert normalise("/a%2Fb", allow_encoded_slashes=True).forwarded == "/a%2Fb"
    with pytest.raises(PathRejected):
        normalise("/a%2Fb")


def test_refusals_and_long_paths_are_not_remembered() -> None:
    _remembered.cache_clear()
    for _ in range(3):
        with pytest.raises(PathRejected):
            normalise("/a%00b")
    long_path = "/" + "a" * REMEMBERED_PATH_CHARS
    assert normalise(long_path).forwarded == long_path
    assert _remembered.cache_info().currsize == 0
    normalise("/short")
    assert _remembered.cache_info().currsize == 1


def test_remembered_paths_are_bounded_under_distinct_hostile_paths() -> None:
    _remembered.cache_clear()
    for index in range(REMEMBERED_PATHS + 500):
        assert normalise(f"/p/{index}/../q{index}").forwarded == f"/p/q{index}"
    assert _remembered.cache_info().currsize == REMEMBERED_PATHS
