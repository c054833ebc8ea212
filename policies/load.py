"""Policy files: YAML -> validated, compiled, frozen `PolicySet`, every problem at once.

    routes:
      - name: acme
        hosts: [acme.gateway.example]
        upstream: https://crm.acme.internal
        org: acme
        default: deny
        rules:
          - allow: {prefix: /api/, methods: [GET, POST]}
          - deny: {glob: "/api/admin/**"}

A rule is a mapping with exactly one of `allow` / `deny`, whose value names exactly one of
`path` (exact), `prefix` (segment-aware) or `glob` (`*` within a segment, `**` across,
`**/` zero or more whole segments, `?` one character), and optionally `methods` (a rule
naming GET covers HEAD too).
docs/policies.md is the full reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from policies.errors import PathRejected, PolicyError
from policies.model import (
    GLOB_ANY_DIRS,
    GLOB_ANY_RUN,
    GLOB_ANY_SEGMENT_RUN,
    GLOB_ONE,
    Capture,
    Effect,
    HeaderEdits,
    MethodOverride,
    PathMatch,
    PolicySet,
    Route,
    Rule,
    Timeouts,
    Upstream,
    compile_glob,
)
from policies.paths import normalise
from policies.source import Problem, Problems, YamlList, YamlMap, load_yaml

MAX_ROUTES = 1000
MAX_RULES = 1000
MAX_PATTERN_LENGTH = 1024
MAX_HEADER_VALUE_LENGTH = 4096

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # RFC 9110 token (method, header)
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ROUTE_KEYS = (
    "name",
    "hosts",
    "upstream",
    "org",
    "default",
    "rules",
    "timeouts",
    "websockets",
    "preserve_host",
    "request_headers",
    "response_headers",
    "capture",
    "allow_encoded_slashes",
    "case_insensitive",
    "verify_upstream_tls",
    "method_override",
)
_REQUIRED_ROUTE_KEYS = ("hosts", "upstream", "org", "default", "rules")


def parse_policy(text: str, file: str) -> PolicySet:
    """Parse one policy document; raises PolicyError with every problem."""
    problems = Problems(file)
    routes = _parse_document(text, problems)
    return _assemble([(file, routes, problems)])


def load_policy_files(paths: Iterable[Path | str]) -> PolicySet:
    """Load and combine policy files; raises PolicyError with every problem of every file."""
    parsed: list[tuple[str, list[Route], Problems]] = []
    for path in paths:
        name = str(path)
        problems = Problems(name)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(1, "(file)", None, f"a readable UTF-8 file ({exc.__class__.__name__})")
            parsed.append((name, [], problems))
            continue
        parsed.append((name, _parse_document(text, problems), problems))
    if not parsed:
        problems = Problems("(policy files)")
        problems.add(0, "(files)", None, "at least one policy file")
        raise PolicyError(problems.items)
    return _assemble(parsed)


def _assemble(parsed: list[tuple[str, list[Route], Problems]]) -> PolicySet:
    by_host: dict[str, Route] = {}
    all_problems: list[Problem] = []
    for _file, routes, problems in parsed:
        for route in routes:
            for host in route.hosts:
                other = by_host.get(host)
                if other is not None:
                    # SECURITY: one host, one route; a second would silently shadow rules.
                    problems.add(
                        _line_of(route.source),
                        f"route {route.name!r}: hosts",
                        host,
                        f"a host named by one route only (also in route {other.name!r} "
                        f"at {other.source})",
                    )
                else:
                    by_host[host] = route
        all_problems.extend(problems.items)
    if all_problems:
        raise PolicyError(all_problems)
    return PolicySet(
        routes=tuple(r for _f, routes, _p in parsed for r in routes),
        by_host=by_host,
        files=tuple(f for f, _r, _p in parsed),
    )


def _line_of(source: str) -> int:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _parse_document(text: str, problems: Problems) -> list[Route]:
    doc = load_yaml(text, problems)
    if problems:
        return []
    if not isinstance(doc, YamlMap):
        problems.add(1, "(document)", _kind(doc), "a mapping with a 'routes' list")
        return []
    for key in doc:
        if key != "routes":
            problems.add(doc.line_of(key), key, None, "no such key; known: routes")
    routes_doc = doc.get("routes")
    if "routes" not in doc:
        problems.add(doc.line, "routes", None, "required")
        return []
    if not isinstance(routes_doc, YamlList):
        problems.add(doc.line_of("routes"), "routes", _kind(routes_doc), "a list of routes")
        return []
    if len(routes_doc) > MAX_ROUTES:
        problems.add(
            routes_doc.line,
            "routes",
            _Described(f"{len(routes_doc)} routes"),
            f"at most {MAX_ROUTES}",
        )
        return []
    routes = []
    seen_names: dict[str, str] = {}
    for index, item in enumerate(routes_doc):
        route = _route(item, f"routes[{index}]", routes_doc.line_of(index), problems)
        if route is None:
            continue
        if route.name in seen_names:
            problems.add(
                _line_of(route.source),
                f"routes[{index}].name",
                route.name,
                f"a route name used once per file (also at {seen_names[route.name]})",
            )
            continue
        seen_names[route.name] = route.source
        routes.append(route)
    return routes


class _Described(str):
    """A description of what was found, shown as is (not quoted) in a problem."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _kind(value: object) -> object:
    """What was found, for messages: containers described, scalars shown as they are."""
    if isinstance(value, YamlMap):
        return _Described("a mapping")
    if isinstance(value, YamlList):
        return _Described("a list")
    return value


def _mapping(
    doc: object, where: str, line: int, known: Iterable[str], problems: Problems
) -> YamlMap | None:
    known = tuple(known)
    if not isinstance(doc, YamlMap):
        problems.add(line, where, _kind(doc), "a mapping")
        return None
    for key in doc:
        if key not in known:
            problems.add(
                doc.line_of(key), f"{where}.{key}", None, f"no such key; known: {', '.join(known)}"
            )
    return doc


def _route(doc: object, where: str, line: int, problems: Problems) -> Route | None:
    mapping = _mapping(doc, where, line, _ROUTE_KEYS, problems)
    if mapping is None:
        return None
    before = len(problems.items)
    for key in _REQUIRED_ROUTE_KEYS:
        if key not in mapping:
            problems.add(mapping.line, f"{where}.{key}", None, "required")

    def read(key: str, reader: Callable[[object, int, str, Problems], Any]) -> Any:
        if key not in mapping:
            return None
        return reader(mapping[key], mapping.line_of(key), f"{where}.{key}", problems)

    hosts = read("hosts", _hosts)
    upstream_url = read("upstream", _upstream)
    org = read("org", _identifier)
    default = read("default", _effect)
    case_insensitive = read("case_insensitive", _boolean)
    rules = read(
        "rules",
        lambda v, ln, k, p: _rules(v, ln, k, p, case_insensitive=bool(case_insensitive)),
    )
    name = read("name", _identifier)
    timeouts = read("timeouts", _timeouts)
    websockets = read("websockets", _boolean)
    preserve_host = read("preserve_host", _boolean)
    request_headers = read("request_headers", _header_edits(request=True))
    response_headers = read("response_headers", _header_edits(request=False))
    capture = read("capture", _capture)
    allow_encoded_slashes = read("allow_encoded_slashes", _boolean)
    verify_tls = read("verify_upstream_tls", _boolean)
    method_override = read("method_override", _method_override)
    if len(problems.items) > before:
        return None
    scheme, host, port, base_path = upstream_url
    return Route(
        name=name or hosts[0],
        hosts=hosts,
        upstream=Upstream(
            url=f"{scheme}://{_authority(host, port)}{base_path}",
            scheme=scheme,
            host=host,
            port=port,
            base_path=base_path,
            verify_tls=True if verify_tls is None else verify_tls,
        ),
        org=org,
        default=default,
        rules=rules,
        timeouts=timeouts or Timeouts(),
        websockets=bool(websockets),
        preserve_host=bool(preserve_host),
        request_headers=request_headers or HeaderEdits(),
        response_headers=response_headers or HeaderEdits(),
        capture=capture or Capture(),
        allow_encoded_slashes=bool(allow_encoded_slashes),
        case_insensitive=bool(case_insensitive),
        method_override=method_override or MethodOverride.QUERY,
        source=f"{problems.file}:{mapping.line}",
    )


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- value readers: (value, line, key, problems) -> parsed value or None -------------------


def _boolean(value: object, line: int, key: str, problems: Problems) -> bool | None:
    if not isinstance(value, bool):
        problems.add(line, key, value, "true or false")
        return None
    return value


def _identifier(value: object, line: int, key: str, problems: Problems) -> str | None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        problems.add(line, key, _kind(value), "1 to 64 characters from A-Z a-z 0-9 . _ -")
        return None
    return value


def _effect(value: object, line: int, key: str, problems: Problems) -> Effect | None:
    if value not in ("allow", "deny"):
        problems.add(line, key, _kind(value), "allow or deny")
        return None
    return Effect(value)


def _method_override(
    value: object, line: int, key: str, problems: Problems
) -> MethodOverride | None:
    if value not in ("query", "body"):
        problems.add(
            line,
            key,
            _kind(value),
            "query or body (body: the application takes _method from form bodies too)",
        )
        return None
    return MethodOverride(value)


def _hosts(value: object, line: int, key: str, problems: Problems) -> tuple[str, ...] | None:
    if not isinstance(value, YamlList) or not value:
        problems.add(line, key, _kind(value), "a non-empty list of host names")
        return None
    hosts: list[str] = []
    ok = True
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        host = item.lower().rstrip(".") if isinstance(item, str) else None
        if host is None or not _HOST.fullmatch(host):
            problems.add(
                value.line_of(index),
                where,
                _kind(item),
                "a host name (letters, digits, - and ., no port)",
            )
            ok = False
        elif host in hosts:
            problems.add(value.line_of(index), where, item, "each host listed once")
            ok = False
        else:
            hosts.append(host)
    return tuple(hosts) if ok else None


def _upstream(
    value: object, line: int, key: str, problems: Problems
) -> tuple[str, str, int, str] | None:
    expected = "an http:// or https:// URL with a host, no credentials, query or fragment"
    if not isinstance(value, str) or len(value) > 2048:
        problems.add(line, key, _kind(value), expected)
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        problems.add(line, key, value, expected)
        return None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or "?" in value
        or "#" in value
    ):
        problems.add(line, key, value, expected)
        return None
    base_path = parts.path.rstrip("/")
    if base_path:
        try:
            canonical = normalise(base_path).forwarded
        except PathRejected as exc:
            problems.add(line, key, value, f"a URL whose path is acceptable ({exc.reason})")
            return None
        if canonical != base_path:
            problems.add(line, key, value, f"a URL whose path is normalised ({canonical})")
            return None
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port or default_port, base_path


def _number(low: float, high: float) -> Callable[[object, int, str, Problems], float | None]:
    def read(value: object, line: int, key: str, problems: Problems) -> float | None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            problems.add(line, key, _kind(value), f"a number from {low:g} to {high:g}")
            return None
        return float(value)

    return read


def _timeouts(value: object, line: int, key: str, problems: Problems) -> Timeouts | None:
    readers = {
        "connect_s": _number(0.1, 300),
        "read_s": _number(0.1, 86400),
        "websocket_idle_s": _number(1, 86400),
    }
    fields = _read_section(value, line, key, readers, problems)
    return None if fields is None else Timeouts(**fields)


def _capture(value: object, line: int, key: str, problems: Problems) -> Capture | None:
    def max_bytes(v: object, ln: int, k: str, p: Problems) -> int | None:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 16 * 1024 * 1024:
            p.add(ln, k, _kind(v), "an integer from 0 to 16777216")
            return None
        return v

    fields = _read_section(value, line, key, {"bodies": _boolean, "max_bytes": max_bytes}, problems)
    return None if fields is None else Capture(**fields)


def _read_section(
    value: object,
    line: int,
    key: str,
    readers: Mapping[str, Callable[[object, int, str, Problems], Any]],
    problems: Problems,
) -> dict[str, Any] | None:
    mapping = _mapping(value, key, line, readers, problems)
    if mapping is None:
        return None
    before = len(problems.items)
    fields = {}
    for name, reader in readers.items():
        if name in mapping:
            fields[name] = reader(mapping[name], mapping.line_of(name), f"{key}.{name}", problems)
    return None if len(problems.items) > before else fields


# Headers whose value the gateway computes for each message (framing, Host, hop-by-hop):
# a route may not set them.
_GATEWAY_FRAMED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)


def _header_name(
    value: object, line: int, key: str, problems: Problems, *, request: bool
) -> str | None:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        problems.add(line, key, _kind(value), "a header name (RFC 9110 token)")
        return None
    if request and value.lower().replace("_", "-").startswith("x-gateway-"):
        # SECURITY: identity headers are the gateway's alone; a policy may not forge or drop them.
        problems.add(
            line, key, value, "a header not starting with X-Gateway- (reserved for identity)"
        )
        return None
    return value


def _header_edits(*, request: bool) -> Callable[[object, int, str, Problems], HeaderEdits | None]:
    def set_(
        value: object, line: int, key: str, problems: Problems
    ) -> tuple[tuple[str, str], ...] | None:
        if not isinstance(value, YamlMap):
            problems.add(line, key, _kind(value), "a mapping of header name to value")
            return None
        out = []
        lower_seen: set[str] = set()
        for name, text in value.items():
            where = f"{key}.{name}"
            checked = _header_name(name, value.line_of(name), where, problems, request=request)
            if (
                not isinstance(text, str)
                or len(text) > MAX_HEADER_VALUE_LENGTH
                or _BAD_VALUE_CHARS.search(text)
            ):
                problems.add(
                    value.line_of(name),
                    where,
                    _kind(text),
                    f"a string header value (at most {MAX_HEADER_VALUE_LENGTH} characters, "
                    "no control characters)",
                )
                continue
            if checked is not None and checked.lower() in _GATEWAY_FRAMED:
                # SECURITY: a second Content-Length, Transfer-Encoding or Host beside the
                # gateway's own would let the upstream frame the message differently.
                problems.add(
                    value.line_of(name),
                    where,
                    name,
                    "a header the gateway sets itself (not framing, Host or hop-by-hop)",
                )
                continue
            if checked is not None:
                if checked.lower() in lower_seen:
                    problems.add(
                        value.line_of(name), where, name, "each header set once (names ignore case)"
                    )
                    continue
                lower_seen.add(checked.lower())
                out.append((checked, text))
        return tuple(out)

    def remove(value: object, line: int, key: str, problems: Problems) -> frozenset[str] | None:
        if not isinstance(value, YamlList):
            problems.add(line, key, _kind(value), "a list of header names")
            return None
        names = [
            _header_name(item, value.line_of(i), f"{key}[{i}]", problems, request=request)
            for i, item in enumerate(value)
        ]
        return frozenset(n.lower() for n in names if n is not None)

    def read(value: object, line: int, key: str, problems: Problems) -> HeaderEdits | None:
        fields = _read_section(value, line, key, {"set": set_, "remove": remove}, problems)
        return None if fields is None else HeaderEdits(**fields)

    return read


# --- rules --------------------------------------------------------------------------------


def _rules(
    value: object, line: int, key: str, problems: Problems, *, case_insensitive: bool
) -> tuple[Rule, ...] | None:
    if not isinstance(value, YamlList):
        problems.add(line, key, _kind(value), "a list of rules (may be empty)")
        return None
    if len(value) > MAX_RULES:
        problems.add(line, key, _Described(f"{len(value)} rules"), f"at most {MAX_RULES}")
        return None
    rules = []
    for index, item in enumerate(value):
        rule = _rule(item, f"{key}[{index}]", value.line_of(index), problems, case_insensitive)
        if rule is not None:
            rules.append(rule)
    return tuple(rules) if len(rules) == len(value) else None


def _rule(
    doc: object, where: str, line: int, problems: Problems, case_insensitive: bool
) -> Rule | None:
    if not isinstance(doc, YamlMap):
        problems.add(line, where, _kind(doc), "a rule: {allow: {...}} or {deny: {...}}")
        return None
    effects = [k for k in ("allow", "deny") if k in doc]
    for key in doc:
        if key not in ("allow", "deny"):
            problems.add(
                doc.line_of(key),
                f"{where}.{key}",
                None,
                "no such key; a rule is {allow: {...}} or {deny: {...}}",
            )
    if len(effects) != 1:
        problems.add(doc.line, where, None, "exactly one of allow or deny")
        return None
    effect = effects[0]
    body_where = f"{where}.{effect}"
    body = _mapping(
        doc[effect],
        body_where,
        doc.line_of(effect),
        ("path", "prefix", "glob", "methods"),
        problems,
    )
    if body is None:
        return None
    kinds = [k for k in ("path", "prefix", "glob") if k in body]
    if len(kinds) != 1:
        problems.add(
            body.line,
            body_where,
            _Described(", ".join(kinds)),
            "exactly one of path, prefix or glob",
        )
        return None
    kind = kinds[0]
    methods = frozenset[str]()
    if "methods" in body:
        read_methods = _methods(
            body["methods"], body.line_of("methods"), f"{body_where}.methods", problems
        )
        if read_methods is None:
            return None
        methods = read_methods
    pattern = body[kind]
    pattern_where = f"{body_where}.{kind}"
    compiled = _pattern(
        pattern, kind, body.line_of(kind), pattern_where, problems, case_insensitive
    )
    if compiled is None:
        return None
    key, regex, glob = compiled
    return Rule(
        effect=Effect(effect),
        methods=methods,
        match={"path": PathMatch.EXACT, "prefix": PathMatch.PREFIX, "glob": PathMatch.GLOB}[kind],
        pattern=pattern,
        source=f"{problems.file}:{doc.line}",
        regex=regex,
        key=key,
        glob=glob,
    )


def _methods(value: object, line: int, key: str, problems: Problems) -> frozenset[str] | None:
    if not isinstance(value, YamlList) or not value:
        problems.add(
            line, key, _kind(value), "a non-empty list of HTTP methods (omit it for any method)"
        )
        return None
    out = set()
    for index, item in enumerate(value):
        if not isinstance(item, str) or not _TOKEN.fullmatch(item):
            problems.add(
                value.line_of(index), f"{key}[{index}]", _kind(item), "an HTTP method name"
            )
            return None
        out.add(item.upper())
    return frozenset(out)


def _pattern(
    value: object, kind: str, line: int, key: str, problems: Problems, case_insensitive: bool
) -> tuple[str, re.Pattern[str], tuple[str, ...]] | None:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATTERN_LENGTH:
        problems.add(
            line,
            key,
            _kind(value),
            f"a path starting with '/' (at most {MAX_PATTERN_LENGTH} characters)",
        )
        return None
    if "%" in value or "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        problems.add(
            line, key, value, "a decoded path: no '%' escapes, backslashes or control characters"
        )
        return None
    segments = value.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "//" in value:
        problems.add(
            line,
            key,
            value,
            "a normalised path (no '.', '..' or empty segments): it could never match",
        )
        return None
    if kind == "glob" and "***" in value:
        problems.add(line, key, value, "a glob using *, ** and ? only ('***' means nothing)")
        return None
    if kind != "glob" and any(c in value for c in "*?"):
        problems.add(line, key, value, f"a {kind} without wildcards (use glob: for * and ?)")
        return None
    key_text = value.casefold() if case_insensitive else value
    if len(key_text) > 1 and key_text.endswith("/"):
        key_text = key_text[:-1]  # trailing slashes never matter for matching
    glob: tuple[str, ...] = ()
    if kind == "path":
        regex = re.escape(key_text) + ("/?" if key_text != "/" else "")
    elif kind == "prefix":
        boundary = key_text if key_text.endswith("/") else key_text + "/"
        regex = f"{re.escape(key_text)}/?|{re.escape(boundary)}.*"
    else:
        glob = compile_glob(key_text)
        regex = (
            "".join(
                {
                    GLOB_ANY_RUN: ".*",
                    GLOB_ANY_DIRS: "(?:.*/)?",
                    GLOB_ANY_SEGMENT_RUN: "[^/]*",
                    GLOB_ONE: "[^/]",
                }.get(t)
                or re.escape(t[1:])
                for t in glob
            )
            + "/?"
        )
    return key_text, re.compile(regex, re.DOTALL), glob
