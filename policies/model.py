"""Frozen, compiled policy objects: what the loader produces and the gateway consumes.

A `PolicySet` maps public host names to `Route`s. `decide(route, method, path, scope)`
(in `policies.decide`) judges one request against a route's ordered rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from policies.paths import NormalisedPath, normalise


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


class PathMatch(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    GLOB = "glob"


class MethodOverride(StrEnum):
    """Where the route's application takes a POST's `_method` from (each is judged).

    `query`: the query only (what every application may do; always judged). `body`: the
    query and a form body too (Rails' Rack::MethodOverride, Laravel, Symfony), so the
    gateway reads such a body ahead, within a bound, before judging.
    """

    QUERY = "query"
    BODY = "body"


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Rule:
    """One ordered allow/deny entry. `methods` empty means every method; a rule naming
    GET also covers HEAD (an upstream answers HEAD with its GET handler).

    `pattern` is the path as written; `key` is what is matched against a path's match key
    (case folded when the route is case-insensitive). `regex` is an equivalent regular
    expression for tools and display; matching itself uses `matches`, which runs globs as
    a linear-time automaton so that no request path can make a pattern backtrack.
    """

    effect: Effect
    methods: frozenset[str]
    match: PathMatch
    pattern: str
    source: str  # "file:line", for explain and audit
    regex: re.Pattern[str] = field(compare=False, repr=False)
    key: str = ""
    glob: tuple[str, ...] = field(default=(), compare=False, repr=False)  # compiled tokens

    def applies_to(self, method: str) -> bool:
        if not self.methods:
            return True
        method = method.upper()
        # SECURITY: upstreams answer HEAD by running their GET handler (only the body is
        # dropped), so a rule naming GET covers HEAD too: a deny for GET denies both.
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)

    def matches(self, match_key: str) -> bool:
        """Does this rule's path cover `match_key` (a `NormalisedPath` reading)?"""
        key = self.key or self.pattern
        # A trailing slash never matters: most upstreams serve /x and /x/ alike, so a deny
        # rule for one must cover the other (patterns lose theirs at load).
        full = match_key
        if len(match_key) > 1 and match_key.endswith("/"):
            match_key = match_key[:-1]
        if self.match is PathMatch.EXACT:
            return match_key == key
        if self.match is PathMatch.PREFIX:
            # Segment-aware: /admin covers /admin and /admin/x, never /administrator.
            boundary = key if key.endswith("/") else key + "/"
            return match_key == key or match_key.startswith(boundary)
        # A Rule built by hand without compiled tokens still matches (never silently not).
        tokens = self.glob or compile_glob(key)
        # With its slash, /admin/ is matched by /admin/* too (an empty last segment).
        return glob_matches(tokens, match_key) or glob_matches(tokens, full)

    def describe(self) -> str:
        methods = ",".join(sorted(self.methods)) if self.methods else "any method"
        return f"{self.effect} {self.match} {self.pattern} ({methods})"


GLOB_ANY_SEGMENT_RUN = "*"  # zero or more characters other than "/"
GLOB_ANY_RUN = "**"  # zero or more characters, "/" included
GLOB_ANY_DIRS = "**/"  # zero or more whole segments: "" or anything ending in "/"
GLOB_ONE = "?"  # exactly one character other than "/"
_GLOB_SKIPPABLE = (GLOB_ANY_SEGMENT_RUN, GLOB_ANY_RUN, GLOB_ANY_DIRS)


def glob_matches(tokens: tuple[str, ...], text: str) -> bool:
    """Run a compiled glob (one token per literal character or wildcard) over `text`.

    A set-of-states automaton: time is len(text) x live states, never exponential. State
    `i` means "tokens before i matched"; state `-(i + 1)` means "inside the `**/` at i",
    which may only be left through a "/".
    """
    end = len(tokens)

    def closure(states: set[int]) -> set[int]:
        pending = [s for s in states if s >= 0]
        while pending:
            state = pending.pop()
            wildcard = state < end and tokens[state] in _GLOB_SKIPPABLE
            if wildcard and state + 1 not in states:
                states.add(state + 1)
                pending.append(state + 1)
        return states

    states = closure({0})
    for char in text:
        following: set[int] = set()
        for state in states:
            if state < 0:
                following.add(state)
                if char == "/":
                    following.add(-state)
                continue
            if state == end:
                continue
            token = tokens[state]
            if token == GLOB_ANY_RUN or (token == GLOB_ANY_SEGMENT_RUN and char != "/"):
                following.add(state)
            elif token == GLOB_ANY_DIRS:
                following.add(-(state + 1))
                if char == "/":
                    following.add(state + 1)
            elif (token == GLOB_ONE and char != "/") or token == "=" + char:
                following.add(state + 1)
        if not following:
            return False
        states = closure(following)
    return end in states


def compile_glob(text: str) -> tuple[str, ...]:
    """Glob text -> tokens for `glob_matches`: wildcards as themselves, literals as "=c"."""
    tokens: list[str] = []
    index = 0
    while index < len(text):
        if text.startswith("**/", index):
            tokens.append(GLOB_ANY_DIRS)
            index += 3
        elif text.startswith("**", index):
            tokens.append(GLOB_ANY_RUN)
            index += 2
        elif text[index] == "*":
            tokens.append(GLOB_ANY_SEGMENT_RUN)
            index += 1
        elif text[index] == "?":
            tokens.append(GLOB_ONE)
            index += 1
        else:
            tokens.append("=" + text[index])
            index += 1
    return tuple(tokens)


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0
    websocket_idle_s: float = 300.0


@dataclass(frozen=True)
class HeaderEdits:
    """Headers the gateway sets or removes on one direction of a route's traffic."""

    set: tuple[tuple[str, str], ...] = ()
    remove: frozenset[str] = frozenset()  # lower-case names


@dataclass(frozen=True)
class Capture:
    """Audit body capture: off unless a route asks; bodies capped at `max_bytes`."""

    bodies: bool = False
    max_bytes: int = 65536


@dataclass(frozen=True)
class Upstream:
    url: str
    scheme: str  # "http" | "https"
    host: str
    port: int
    base_path: str  # "" or "/prefix" without trailing slash
    verify_tls: bool = True


@dataclass(frozen=True)
class Route:
    name: str
    hosts: tuple[str, ...]  # lower-case host names, no port
    upstream: Upstream
    org: str
    default: Effect
    rules: tuple[Rule, ...]
    timeouts: Timeouts = Timeouts()
    websockets: bool = False
    preserve_host: bool = False
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    capture: Capture = Capture()
    allow_encoded_slashes: bool = False
    case_insensitive: bool = False
    method_override: MethodOverride = MethodOverride.QUERY
    source: str = ""  # "file:line" of the route

    def normalise(self, raw_path: str) -> NormalisedPath:
        """The path as this route judges and forwards it (PathRejected when refused)."""
        return normalise(
            raw_path,
            allow_encoded_slashes=self.allow_encoded_slashes,
            case_insensitive=self.case_insensitive,
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: Rule | None  # None when the route default or the scope decided
    reason: str


@dataclass(frozen=True)
class PolicySet:
    routes: tuple[Route, ...]
    by_host: dict[str, Route] = field(compare=False, hash=False)
    files: tuple[str, ...] = ()

    def route_for(self, host: str) -> Route | None:
        """The route for a Host header value (port and trailing dot ignored, case folded)."""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return self.by_host.get(name.rstrip(".").lower())
