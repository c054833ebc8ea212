"""Fuzzing: the loader only ever raises PolicyError; the normaliser is idempotent, never
leaves dot or empty segments, and no spelling of a denied path gets past the deny rule."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Any
from urllib.parse import unquote

import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from policies.decide import decide
from policies.errors import PathRejected, PolicyError
from policies.load import parse_policy
from policies.model import PolicySet, Route, Scope
from policies.paths import normalise

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_LOADER = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

KEYS = [
    "routes", "name", "hosts", "upstream", "org", "default", "rules", "allow", "deny", "path",
    "prefix", "glob", "methods", "timeouts", "connect_s", "read_s", "websocket_idle_s",
    "websockets", "preserve_host", "request_headers", "response_headers", "set", "remove",
    "capture", "bodies", "max_bytes", "allow_encoded_slashes", "case_insensitive",
    "verify_upstream_tls",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["allow", "deny", "/", "/api/**", "http://127.0.0.1:9", "a.example", "GET"]),
    st.text(max_size=30),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5
        ),
    ),
    max_leaves=25,
)


def _check_parse(text: str) -> None:
    outcome: PolicySet | PolicyError
    try:
        outcome = parse_policy(text, "p.yaml")
    except PolicyError as exc:
        outcome = exc
    if isinstance(outcome, PolicyError):
        assert outcome.problems
        assert all(str(p).startswith("p.yaml:") for p in outcome.problems)
    else:
        assert isinstance(outcome, PolicySet)


@FUZZ_LOADER
@given(VALUES)
def test_loader_never_crashes_on_random_documents(doc: Any) -> None:
    _check_parse(yaml.safe_dump({"routes": doc} if not isinstance(doc, dict) else doc))


@FUZZ_LOADER
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8), max_size=3))
def test_loader_never_crashes_on_route_shaped_documents(routes: list[dict[str, Any]]) -> None:
    _check_parse(yaml.safe_dump({"routes": routes}))


@FUZZ
@given(
    st.text(alphabet=st.sampled_from(list("routes:-[]{}&*!|>'\"#%@`,?\n\t \\ab1é")), max_size=80)
)
def test_loader_never_crashes_on_yamlish_text(text: str) -> None:
    _check_parse(text)


def _deny_route(name: str, option: str) -> str:
    """A route allowing everything but /admin; `option` is one extra route line."""
    return f"""
  - name: {name}
    hosts: [{name}.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: allow{option}
    rules:
      - allow: {{prefix: /}}
      - deny: {{prefix: /admin}}"""


# The same deny rule judged case-sensitively, case-insensitively and with encoded slashes.
DENY_POLICY = (
    "routes:"
    + _deny_route("cs", "")
    + _deny_route("ci", "\n    case_insensitive: true")
    + _deny_route("sl", "\n    allow_encoded_slashes: true")
    + "\n"
)
ROUTES = parse_policy(DENY_POLICY, "fuzz.yaml").routes
PIECES = [
    "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "%2f", "%2F", "%5c", "\\", ";", ";x=1", "?",
    "admin", "ADMIN", "Admin", "%61", "%41", "dmin", "DMIN", "a", "d", "%00", "%", "%zz", "%25",
    "é", "%C3%A9", "／", "%EF%BC%8F", "．", "%C0%AE", "%E0%80%AE", "x", "%20", "\x00", "\t", "~",
]  # fmt: skip
ADMIN_SPELLINGS = ["admin", "ADMIN", "%61dmin", "%61%64%6d%69%6e", "ａdmin", "adm%49n", "Admin"]
HOSTILE_PATHS = st.tuples(
    st.lists(st.sampled_from(PIECES), max_size=8),
    st.sampled_from(ADMIN_SPELLINGS),
    st.lists(st.sampled_from(PIECES), max_size=4),
).map(lambda t: "/" + "".join(t[0]) + t[1] + "".join(t[2]))
ANY_PATHS = st.one_of(HOSTILE_PATHS, st.text(max_size=60), st.text(max_size=60).map("/".__add__))


def _oracle_under_admin(raw: str, *, fold: bool) -> bool:
    """An independent, lenient reading an upstream might make: decode everything, treat
    backslashes as slashes, cut ;parameters, NFKC-fold, resolve dots."""
    text = unquote(raw, errors="replace").replace("\\", "/")
    text = "/".join(s.split(";", 1)[0] for s in text.split("/"))
    text = unicodedata.normalize("NFKC", text)
    text = posixpath.normpath("/" + re.sub("/+", "/", text))
    text = re.sub("/+", "/", text)
    if fold:
        text = text.casefold()
    return text == "/admin" or text.startswith("/admin/")


def _outcome(route: Route, raw: str) -> bool | None:
    """True allowed, False denied, None refused (400)."""
    try:
        path = route.normalise(raw)
    except PathRejected:
        return None
    return decide(route, "GET", path, Scope.WRITE).allowed


@FUZZ
@given(HOSTILE_PATHS)
# An encoded slash stays inside its segment, so `..` removes the whole `admin%2fadmin`:
# the upstream is sent `/`, while a reading of the raw text would have landed in /admin.
@example("/admin%2fadmin/..")
def test_no_spelling_of_a_denied_path_is_allowed(raw: str) -> None:
    # The upstream reads the path the gateway forwards, never the client's raw text: no
    # lenient reading of what is forwarded may land under /admin when the gateway allowed it.
    for route in ROUTES:
        if _outcome(route, raw) is True:
            forwarded = route.normalise(raw).forwarded
            assert not _oracle_under_admin(forwarded, fold=route.case_insensitive), (
                route.name,
                raw,
                forwarded,
            )


@FUZZ
@given(ANY_PATHS)
def test_deny_rule_covering_the_normalised_path_denies(raw: str) -> None:
    for route in ROUTES:
        try:
            path = route.normalise(raw)
        except PathRejected:
            continue
        deny = route.rules[1]
        if any(deny.matches(key) for key in path.match_keys):
            assert not decide(route, "GET", path, Scope.WRITE).allowed
        # Judging strings is never more lenient: the forwarded path on its own, or the
        # match keys one by one (a request denied if any key is denied).
        if not decide(route, "GET", path, Scope.WRITE).allowed:
            assert not decide(route, "GET", path.forwarded, Scope.WRITE).allowed
            keys = path.match_keys
            assert not all(decide(route, "GET", k, Scope.WRITE).allowed for k in keys)


@FUZZ
@given(ANY_PATHS, st.booleans(), st.booleans())
def test_normalise_is_idempotent_and_leaves_no_dot_or_empty_segments(
    raw: str, slashes: bool, fold: bool
) -> None:
    refused: PathRejected | None
    try:
        path = normalise(raw, allow_encoded_slashes=slashes, case_insensitive=fold)
    except PathRejected as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert refused.reason
        return
    forwarded = path.forwarded
    assert forwarded.startswith("/")
    for bad in ("/../", "//", "/./"):
        assert bad not in forwarded
    assert not forwarded.endswith(("/..", "/."))
    assert forwarded.isascii()
    assert normalise(forwarded, allow_encoded_slashes=slashes, case_insensitive=fold) == path
    for key in path.match_keys:
        assert "//" not in key
        assert "/../" not in key
        assert "/./" not in key


GLOB_PIECES = ["/", "a", "b", "*", "**", "**/", "?"]


@FUZZ
@given(
    st.lists(st.sampled_from(GLOB_PIECES), min_size=1, max_size=8).map(lambda p: "/" + "".join(p)),
    st.lists(st.sampled_from(["a", "b", "/"]), max_size=10).map(lambda p: "/" + "".join(p)),
)
def test_glob_automaton_agrees_with_its_regular_expression(pattern: str, text: str) -> None:
    assume("//" not in pattern and "***" not in pattern and "//" not in text)
    try:
        rule = (
            parse_policy(
                DENY_POLICY.replace("{prefix: /admin}", "{glob: '" + pattern + "'}"), "g.yaml"
            )
            .routes[0]
            .rules[1]
        )
    except PolicyError:
        assume(False)
        raise
    assert rule.matches(text) == bool(rule.regex.fullmatch(text)), (pattern, text, rule.regex)
