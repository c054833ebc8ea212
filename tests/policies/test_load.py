# ruff: noqa: E501  (expected problem messages are quoted whole, as the loader prints them)
"""The policy loader: the compiled result, and every error message with its file:line."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from policies.errors import PolicyError
from policies.load import MAX_ROUTES, MAX_RULES, load_policy_files, parse_policy
from policies.model import Effect, MethodOverride, PathMatch

BASE_KEYS = {
    "name": "r",
    "hosts": "[a.example]",
    "upstream": "http://127.0.0.1:9",
    "org": "acme",
    "default": "deny",
    "rules": "[]",
}


def doc(extra: str = "", drop: tuple[str, ...] = (), **values: str) -> str:
    """A one-route document: line 1 `routes:`, the route's keys on lines 2..7, then `extra`
    (route-level lines, indented by 4) from line 8 on."""
    keys = {**BASE_KEYS, **values}
    lines = ["routes:"]
    first = True
    for key, value in keys.items():
        if key in drop:
            lines.append("    # dropped")
            continue
        lines.append(("  - " if first else "    ") + f"{key}: {value}")
        first = False
    return "\n".join(lines) + "\n" + extra


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return [str(p) for p in caught.value.problems]


def test_valid_document_compiles_every_option() -> None:
    text = doc(
        name="crm",
        hosts="[CRM.Example., crm2.example]",
        upstream="https://crm.internal:8443/base/",
        extra="""    timeouts: {connect_s: 1, read_s: 2.5, websocket_idle_s: 30}
    websockets: true
    preserve_host: true
    request_headers: {set: {X-Team: support}, remove: [Cookie2]}
    response_headers: {set: {X-Frame-Options: DENY}, remove: [Server]}
    capture: {bodies: true, max_bytes: 1024}
    allow_encoded_slashes: true
    case_insensitive: true
    verify_upstream_tls: false
""",
        rules="""
      - allow: {prefix: /API/, methods: [get, POST]}
      - deny: {glob: "/api/**/secret"}
      - allow: {path: /}""",
    )
    policy_set = parse_policy(text, "p.yaml")
    route = policy_set.route_for("crm.example:443")
    assert route is not None
    assert route.name == "crm"
    assert route.hosts == ("crm.example", "crm2.example")
    assert (route.upstream.scheme, route.upstream.host, route.upstream.port) == (
        "https",
        "crm.internal",
        8443,
    )
    assert route.upstream.base_path == "/base"
    assert route.upstream.url == "https://crm.internal:8443/base"
    assert route.upstream.verify_tls is False
    assert (route.timeouts.connect_s, route.timeouts.read_s) == (1.0, 2.5)
    assert route.websockets
    assert route.preserve_host
    assert route.case_insensitive
    assert route.request_headers.set == (("X-Team", "support"),)
    assert route.request_headers.remove == frozenset({"cookie2"})
    assert route.response_headers.remove == frozenset({"server"})
    assert (route.capture.bodies, route.capture.max_bytes) == (True, 1024)
    assert route.allow_encoded_slashes
    first, second, third = route.rules
    assert first.effect is Effect.ALLOW
    assert first.match is PathMatch.PREFIX
    assert first.methods == frozenset({"GET", "POST"})
    assert first.pattern == "/API/"
    assert first.key == "/api"
    assert first.source == "p.yaml:8"
    assert second.effect is Effect.DENY
    assert second.match is PathMatch.GLOB
    assert second.regex.fullmatch("/api/x/y/secret")
    assert third.match is PathMatch.EXACT
    assert not third.methods
    assert route.source == "p.yaml:2"


def test_defaults_when_options_are_omitted() -> None:
    route = parse_policy(doc(drop=("name",), upstream="http://h.example"), "p.yaml").routes[0]
    assert route.name == "a.example"
    assert route.upstream.port == 80
    assert route.upstream.base_path == ""
    secure = parse_policy(doc(upstream="https://h.example/"), "p.yaml").routes[0]
    assert secure.upstream.port == 443
    assert secure.upstream.url == "https://h.example:443"
    assert route.upstream.verify_tls is True
    assert not route.websockets
    assert not route.allow_encoded_slashes
    assert not route.case_insensitive
    assert not route.capture.bodies
    assert route.method_override is MethodOverride.QUERY


def test_method_override_names_where_the_application_takes_method_from() -> None:
    body = parse_policy(doc("    method_override: body\n"), "p.yaml").routes[0]
    assert body.method_override is MethodOverride.BODY
    query = parse_policy(doc("    method_override: query\n"), "p.yaml").routes[0]
    assert query.method_override is MethodOverride.QUERY


LOADER_ERRORS: list[tuple[str, str]] = [
    # (document, expected problem text) -- the text is the whole `file:line: key: ...`.
    ("routes: [\n", "p.yaml:2: (syntax): valid YAML"),
    ("routes: []\nroutes: []\n", "p.yaml:2: (syntax): valid YAML: duplicate key 'routes'"),
    ("a: &x 1\nb: *x\n", "p.yaml:1: (document): no YAML anchors or aliases"),
    ("", "p.yaml:1: (document): a mapping with a 'routes' list"),
    ("- 1\n", "p.yaml:1: (document): a mapping with a 'routes' list (got a list)"),
    ("routes: []\nroute: []\n", "p.yaml:2: route: no such key; known: routes"),
    ("other: 1\n", "p.yaml:1: routes: required"),
    ("routes: {}\n", "p.yaml:1: routes: a list of routes (got a mapping)"),
    ("routes:\n  - 5\n", "p.yaml:2: routes[0]: a mapping (got 5)"),
    (doc("    colour: blue\n"), "p.yaml:8: routes[0].colour: no such key; known: name, hosts"),
    (doc(drop=("hosts",)), "p.yaml:2: routes[0].hosts: required"),
    (doc(drop=("upstream",)), "p.yaml:2: routes[0].upstream: required"),
    (doc(drop=("org",)), "p.yaml:2: routes[0].org: required"),
    (doc(drop=("default",)), "p.yaml:2: routes[0].default: required"),
    (doc(drop=("rules",)), "p.yaml:2: routes[0].rules: required"),
    (
        doc(name="'a b'"),
        "p.yaml:2: routes[0].name: 1 to 64 characters from A-Z a-z 0-9 . _ - (got 'a b')",
    ),
    (
        doc(org="[x]"),
        "p.yaml:5: routes[0].org: 1 to 64 characters from A-Z a-z 0-9 . _ - (got a list)",
    ),
    (doc(default="maybe"), "p.yaml:6: routes[0].default: allow or deny (got 'maybe')"),
    (doc(default="''"), "p.yaml:6: routes[0].default: allow or deny"),
    (doc(hosts="[]"), "p.yaml:3: routes[0].hosts: a non-empty list of host names (got a list)"),
    (
        doc(hosts="a.example"),
        "p.yaml:3: routes[0].hosts: a non-empty list of host names (got 'a.example')",
    ),
    (
        doc(hosts="['a.example:8443']"),
        "p.yaml:3: routes[0].hosts[0]: a host name (letters, digits, - and ., no port) (got 'a.example:8443')",
    ),
    (doc(hosts="['*.example']"), "p.yaml:3: routes[0].hosts[0]: a host name"),
    (
        doc(hosts="[7]"),
        "p.yaml:3: routes[0].hosts[0]: a host name (letters, digits, - and ., no port) (got 7)",
    ),
    (
        doc(hosts="[a.example, A.example]"),
        "p.yaml:3: routes[0].hosts[1]: each host listed once (got 'A.example')",
    ),
    (
        doc(upstream="ftp://x"),
        "p.yaml:4: routes[0].upstream: an http:// or https:// URL with a host, no credentials, query or fragment (got 'ftp://x')",
    ),
    (doc(upstream="http://u:p@x"), "p.yaml:4: routes[0].upstream: an http:// or https:// URL"),
    (doc(upstream="'http://x/?q=1'"), "p.yaml:4: routes[0].upstream: an http:// or https:// URL"),
    (doc(upstream="'http://x/#f'"), "p.yaml:4: routes[0].upstream: an http:// or https:// URL"),
    (doc(upstream="http://x:99999"), "p.yaml:4: routes[0].upstream: an http:// or https:// URL"),
    (doc(upstream="http:///path"), "p.yaml:4: routes[0].upstream: an http:// or https:// URL"),
    (
        doc(upstream="http://x/" + "a" * 2048),
        "p.yaml:4: routes[0].upstream: an http:// or https:// URL",
    ),
    (
        doc(upstream="80"),
        "p.yaml:4: routes[0].upstream: an http:// or https:// URL with a host, no credentials, query or fragment (got 80)",
    ),
    (
        doc(upstream="http://x/a%2Fb"),
        "p.yaml:4: routes[0].upstream: a URL whose path is acceptable (encoded slash or backslash (%2F) in path)",
    ),
    (
        doc(upstream="http://x/a/../b"),
        "p.yaml:4: routes[0].upstream: a URL whose path is normalised (/b)",
    ),
    (
        doc("    websockets: yes please\n"),
        "p.yaml:8: routes[0].websockets: true or false (got 'yes please')",
    ),
    (doc("    preserve_host: 1\n"), "p.yaml:8: routes[0].preserve_host: true or false (got 1)"),
    (
        doc("    allow_encoded_slashes: 'true'\n"),
        "p.yaml:8: routes[0].allow_encoded_slashes: true or false (got 'true')",
    ),
    (doc("    case_insensitive: null\n"), "p.yaml:8: routes[0].case_insensitive: true or false"),
    (
        doc("    verify_upstream_tls: no-thanks\n"),
        "p.yaml:8: routes[0].verify_upstream_tls: true or false",
    ),
    (
        doc("    method_override: BODY\n"),
        "p.yaml:8: routes[0].method_override: query or body (body: the application takes _method from form bodies too) (got 'BODY')",
    ),
    (
        doc("    method_override: true\n"),
        "p.yaml:8: routes[0].method_override: query or body (body: the application takes _method from form bodies too) (got True)",
    ),
    (
        doc("    method_override: [body]\n"),
        "p.yaml:8: routes[0].method_override: query or body (body: the application takes _method from form bodies too) (got a list)",
    ),
    (
        doc("    method_override: {body: true}\n"),
        "p.yaml:8: routes[0].method_override: query or body (body: the application takes _method from form bodies too) (got a mapping)",
    ),
    (
        doc("    method_override:\n"),
        "p.yaml:8: routes[0].method_override: query or body (body: the application takes _method from form bodies too)",
    ),
    (doc("    timeouts: 5\n"), "p.yaml:8: routes[0].timeouts: a mapping (got 5)"),
    (
        doc("    timeouts: {connect_s: 0}\n"),
        "p.yaml:8: routes[0].timeouts.connect_s: a number from 0.1 to 300 (got 0)",
    ),
    (
        doc("    timeouts: {read_s: true}\n"),
        "p.yaml:8: routes[0].timeouts.read_s: a number from 0.1 to 86400 (got True)",
    ),
    (
        doc("    timeouts: {websocket_idle_s: 1e9}\n"),
        "p.yaml:8: routes[0].timeouts.websocket_idle_s: a number from 1 to 86400",
    ),
    (
        doc("    timeouts: {write_s: 1}\n"),
        "p.yaml:8: routes[0].timeouts.write_s: no such key; known: connect_s, read_s, websocket_idle_s",
    ),
    (
        doc("    capture: {bodies: 1}\n"),
        "p.yaml:8: routes[0].capture.bodies: true or false (got 1)",
    ),
    (
        doc("    capture: {max_bytes: -1}\n"),
        "p.yaml:8: routes[0].capture.max_bytes: an integer from 0 to 16777216 (got -1)",
    ),
    (
        doc("    capture: {max_bytes: 1.5}\n"),
        "p.yaml:8: routes[0].capture.max_bytes: an integer from 0 to 16777216 (got 1.5)",
    ),
    (
        doc("    request_headers: []\n"),
        "p.yaml:8: routes[0].request_headers: a mapping (got a list)",
    ),
    (
        doc("    request_headers: {add: {}}\n"),
        "p.yaml:8: routes[0].request_headers.add: no such key; known: set, remove",
    ),
    (
        doc("    request_headers: {set: [a]}\n"),
        "p.yaml:8: routes[0].request_headers.set: a mapping of header name to value (got a list)",
    ),
    (
        doc("    request_headers: {set: {'Bad Name': x}}\n"),
        "p.yaml:8: routes[0].request_headers.set.Bad Name: a header name (RFC 9110 token) (got 'Bad Name')",
    ),
    (
        doc("    request_headers: {set: {X-Gateway-User: bob}}\n"),
        "p.yaml:8: routes[0].request_headers.set.X-Gateway-User: a header not starting with X-Gateway- (reserved for identity) (got 'X-Gateway-User')",
    ),
    (
        doc("    request_headers: {remove: [x_gateway_assertion]}\n"),
        "p.yaml:8: routes[0].request_headers.remove[0]: a header not starting with X-Gateway-",
    ),
    (
        doc("    request_headers: {set: {Content-Length: '0'}}\n"),
        "p.yaml:8: routes[0].request_headers.set.Content-Length: a header the gateway sets itself (not framing, Host or hop-by-hop) (got 'Content-Length')",
    ),
    (
        doc("    request_headers: {set: {transfer-encoding: chunked}}\n"),
        "p.yaml:8: routes[0].request_headers.set.transfer-encoding: a header the gateway sets itself",
    ),
    (
        doc("    request_headers: {set: {Host: internal.example}}\n"),
        "p.yaml:8: routes[0].request_headers.set.Host: a header the gateway sets itself",
    ),
    (
        doc("    response_headers: {set: {Content-Length: '5', Connection: close}}\n"),
        "p.yaml:8: routes[0].response_headers.set.Content-Length: a header the gateway sets itself",
    ),
    (
        doc("    request_headers: {set: {X-A: 5}}\n"),
        "p.yaml:8: routes[0].request_headers.set.X-A: a string header value (at most 4096 characters, no control characters) (got 5)",
    ),
    (
        doc('    response_headers: {set: {X-A: "a\\r\\nSet-Cookie: x"}}\n'),
        "p.yaml:8: routes[0].response_headers.set.X-A: a string header value",
    ),
    (
        doc("    response_headers: {set: {X-A: a, x-a: b}}\n"),
        "p.yaml:8: routes[0].response_headers.set.x-a: each header set once (names ignore case) (got 'x-a')",
    ),
    (
        doc("    response_headers: {remove: Server}\n"),
        "p.yaml:8: routes[0].response_headers.remove: a list of header names (got 'Server')",
    ),
    (doc(rules="{}"), "p.yaml:7: routes[0].rules: a list of rules (may be empty) (got a mapping)"),
    (
        doc(rules="[5]"),
        "p.yaml:7: routes[0].rules[0]: a rule: {allow: {...}} or {deny: {...}} (got 5)",
    ),
    (
        doc(rules="[{allow: {path: /}, deny: {path: /}}]"),
        "p.yaml:7: routes[0].rules[0]: exactly one of allow or deny",
    ),
    (doc(rules="[{}]"), "p.yaml:7: routes[0].rules[0]: exactly one of allow or deny"),
    (
        doc(rules="[{allow: {path: /}, note: x}]"),
        "p.yaml:7: routes[0].rules[0].note: no such key; a rule is {allow: {...}} or {deny: {...}}",
    ),
    (doc(rules="[{allow: /x}]"), "p.yaml:7: routes[0].rules[0].allow: a mapping (got '/x')"),
    (
        doc(rules="[{allow: {path: /, colour: red}}]"),
        "p.yaml:7: routes[0].rules[0].allow.colour: no such key; known: path, prefix, glob, methods",
    ),
    (
        doc(rules="[{allow: {methods: [GET]}}]"),
        "p.yaml:7: routes[0].rules[0].allow: exactly one of path, prefix or glob",
    ),
    (
        doc(rules="[{deny: {path: /a, prefix: /b}}]"),
        "p.yaml:7: routes[0].rules[0].deny: exactly one of path, prefix or glob (got path, prefix)",
    ),
    (
        doc(rules="[{allow: {path: /, methods: []}}]"),
        "p.yaml:7: routes[0].rules[0].allow.methods: a non-empty list of HTTP methods (omit it for any method) (got a list)",
    ),
    (
        doc(rules="[{allow: {path: /, methods: GET}}]"),
        "p.yaml:7: routes[0].rules[0].allow.methods: a non-empty list of HTTP methods",
    ),
    (
        doc(rules="[{allow: {path: /, methods: ['GE T']}}]"),
        "p.yaml:7: routes[0].rules[0].allow.methods[0]: an HTTP method name (got 'GE T')",
    ),
    (
        doc(rules="[{allow: {path: x}}]"),
        "p.yaml:7: routes[0].rules[0].allow.path: a path starting with '/' (at most 1024 characters) (got 'x')",
    ),
    (
        doc(rules="[{allow: {path: 5}}]"),
        "p.yaml:7: routes[0].rules[0].allow.path: a path starting with '/' (at most 1024 characters) (got 5)",
    ),
    (
        doc(rules=f"[{{allow: {{path: /{'a' * 1024}}}}}]"),
        "p.yaml:7: routes[0].rules[0].allow.path: a path starting with '/' (at most 1024 characters)",
    ),
    (
        doc(rules="[{allow: {path: /caf%C3%A9}}]"),
        "p.yaml:7: routes[0].rules[0].allow.path: a decoded path: no '%' escapes, backslashes or control characters (got '/caf%C3%A9')",
    ),
    (
        doc(rules="[{allow: {path: '/a\\b'}}]"),
        "p.yaml:7: routes[0].rules[0].allow.path: a decoded path: no '%' escapes",
    ),
    (
        doc(rules='[{allow: {path: "/a\\tb"}}]'),
        "p.yaml:7: routes[0].rules[0].allow.path: a decoded path: no '%' escapes",
    ),
    (
        doc(rules="[{deny: {prefix: /a/../admin}}]"),
        "p.yaml:7: routes[0].rules[0].deny.prefix: a normalised path (no '.', '..' or empty segments): it could never match (got '/a/../admin')",
    ),
    (
        doc(rules="[{deny: {prefix: //admin}}]"),
        "p.yaml:7: routes[0].rules[0].deny.prefix: a normalised path",
    ),
    (
        doc(rules="[{deny: {glob: /a/***}}]"),
        "p.yaml:7: routes[0].rules[0].deny.glob: a glob using *, ** and ? only ('***' means nothing) (got '/a/***')",
    ),
    (
        doc(rules="[{deny: {prefix: /a/*}}]"),
        "p.yaml:7: routes[0].rules[0].deny.prefix: a prefix without wildcards (use glob: for * and ?) (got '/a/*')",
    ),
    (
        doc(rules="[{deny: {path: '/a?'}}]"),
        "p.yaml:7: routes[0].rules[0].deny.path: a path without wildcards (use glob: for * and ?)",
    ),
    (
        "routes:\n" + doc().split("\n", 1)[1] + doc(hosts="[b.example]").split("\n", 1)[1],
        "p.yaml:8: routes[1].name: a route name used once per file (also at p.yaml:2) (got 'r')",
    ),
    (
        "routes:\n"
        + doc().split("\n", 1)[1]
        + doc(name="other", hosts="[A.example]").split("\n", 1)[1],
        "p.yaml:8: route 'other': hosts: a host named by one route only (also in route 'r' at p.yaml:2) (got 'a.example')",
    ),
]


@pytest.mark.parametrize(("text", "expected"), LOADER_ERRORS)
def test_every_loader_error_names_file_line_key_and_expectation(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_reported_at_once() -> None:
    text = doc(
        "    websockets: maybe\n    colour: red\n",
        default="perhaps",
        upstream="gopher://x",
        rules="[{allow: {path: nope}}, {deny: {glob: /***}}]",
    )
    found = problems_of(text)
    assert len(found) == 6, found
    assert {p.split(": ")[1] for p in found} == {
        "routes[0].default",
        "routes[0].upstream",
        "routes[0].rules[0].allow.path",
        "routes[0].rules[1].deny.glob",
        "routes[0].websockets",
        "routes[0].colour",
    }


def test_too_many_routes_and_rules() -> None:
    routes = "routes:\n" + "".join(f"  - {{name: r{i}}}\n" for i in range(MAX_ROUTES + 1))
    assert problems_of(routes) == [f"p.yaml:2: routes: at most {MAX_ROUTES} (got 1001 routes)"]
    rules = "[" + ", ".join("{allow: {path: /}}" for _ in range(MAX_RULES + 1)) + "]"
    assert problems_of(doc(rules=rules)) == [
        f"p.yaml:7: routes[0].rules: at most {MAX_RULES} (got 1001 rules)"
    ]


def test_oversized_document_refused() -> None:
    text = doc("    # " + "x" * (4 * 1024 * 1024) + "\n")
    assert problems_of(text) == ["p.yaml:1: (document): at most 4194304 bytes"]


@pytest.mark.parametrize(
    "nested", ["[" * 100_000 + "]" * 100_000, "{a: " * 5_000 + "1" + "}" * 5_000]
)
def test_deeply_nested_document_is_a_problem_not_a_crash(nested: str) -> None:
    assert problems_of("routes: " + nested) == ["p.yaml:1: (document): YAML nested less deeply"]


def test_files_combine_and_duplicate_host_across_files_is_an_error(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text(doc())
    two.write_text(doc(name="s", hosts="[b.example]"))
    policy_set = load_policy_files([one, two])
    assert set(policy_set.by_host) == {"a.example", "b.example"}
    assert policy_set.files == (str(one), str(two))
    two.write_text(doc(name="s", hosts="[b.example, a.example]"))
    with pytest.raises(PolicyError) as caught:
        load_policy_files([one, two])
    (problem,) = caught.value.problems
    assert problem.file == str(two)
    assert problem.line == 2
    assert f"also in route 'r' at {one}:2" in problem.expected


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError) as caught:
        load_policy_files([tmp_path / "missing.yaml", binary])
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'missing.yaml'}:1: (file): a readable UTF-8 file (FileNotFoundError)",
        f"{binary}:1: (file): a readable UTF-8 file (UnicodeDecodeError)",
    ]
    with pytest.raises(PolicyError) as empty:
        load_policy_files([])
    assert str(empty.value) == "(policy files):0: (files): at least one policy file"


def test_demo_policy_is_valid(project_root: Path) -> None:
    policy_set = load_policy_files([project_root / "config/policies/demo.yaml"])
    route = policy_set.route_for("acme.localhost")
    assert route is not None
    assert route.org == "acme"
    assert route.websockets
    assert route.default is Effect.DENY
    assert route.capture.bodies
    assert route.capture.max_bytes == 65536


def test_concurrent_parses_agree() -> None:
    text = doc(rules="[{allow: {prefix: /api}}, {deny: {glob: '/api/**/x'}}]")
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: parse_policy(text, "p.yaml"), range(32)))
    assert all(r.routes == results[0].routes for r in results)
    assert results[0].routes[0].rules[1].matches("/api/a/x")
