"""Frozen, compiled policy objects: what the loader produces and the gateway consumes.

A `PolicySet` maps public host names to `Route`s. `decide(route, method, path, scope)`
(in `policies.decide`) judges one request against a route's ordered rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


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


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Rule:
    """One ordered allow/deny entry. `methods` empty means every method."""

    effect: Effect
    methods: frozenset[str]
    match: PathMatch
    pattern: str
    source: str  # "file:line", for explain and audit
    regex: re.Pattern[str] = field(compare=False, repr=False)


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
    source: str = ""  # "file:line" of the route


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
