"""The live routing policy: loaded at start-up, swapped atomically on reload.

    # raises PolicyError if invalid (or if a route names the console host)
    store = PolicyStore(config.policy_files, console_host=config.console_host)
    store.install_sighup(asyncio.get_running_loop())  # `kill -HUP` reloads
    task = asyncio.create_task(store.watch(2.0))      # or poll the files for changes
    route = store.current.route_for(host)

A reload that fails keeps the last good policy in force, logs every problem and counts
the failure (`gateway_policy_reload_failures_total`); a good one swaps the whole
`PolicySet` in one assignment, so a request sees either the old policy or the new one,
never a mix, and counts `gateway_policy_reloads_total`.

No route may claim the console host: the console's session cookie, CSRF tokens and API
live there, and a routed customer application on that origin would run its JavaScript
beside them. `load_gateway_policies(paths, console_host)` refuses such a set at start-up
and on every reload (the last good set stays), and `gateway config check` uses it too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from policies.errors import PolicyError
from policies.load import load_policy_files
from policies.model import PolicySet
from policies.source import Problem

log = logging.getLogger("gateway.policy")

Fingerprint = tuple[tuple[str, int, int, str], ...]


@dataclass(frozen=True)
class _ReloadCounters:
    reloads: Counter
    failures: Counter


# One pair of counters per registry: prometheus_client refuses a second registration of
# a name, and several stores (tests, or one process serving twice) may share a registry.
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, _ReloadCounters] = (
    weakref.WeakKeyDictionary()
)


def _counters(registry: CollectorRegistry) -> _ReloadCounters:
    found = _COUNTERS.get(registry)
    if found is None:
        found = _ReloadCounters(
            reloads=Counter(
                "gateway_policy_reloads",
                "Policy reloads that swapped in a new valid policy.",
                registry=registry,
            ),
            failures=Counter(
                "gateway_policy_reload_failures",
                "Policy reloads refused because the files were invalid; the last good stayed.",
                registry=registry,
            ),
        )
        _COUNTERS[registry] = found
    return found


def load_gateway_policies(paths: Iterable[Path | str], console_host: str | None) -> PolicySet:
    """Load policy files as the gateway serves them; raises PolicyError with every problem.

    On top of the policy language's own checks, no route may name `console_host`.
    """
    policy_set = load_policy_files(paths)
    # Compared as route hosts are stored: lower case, no trailing dot (a console URL may
    # carry one, and `route_for` ignores it).
    console = (console_host or "").lower().rstrip(".")
    if console:
        problems = [
            _console_host_problem(route.name, route.source, host)
            for route in policy_set.routes
            for host in route.hosts
            # SECURITY: the console origin is never proxied (its cookie and CSRF live there).
            if host == console
        ]
        if problems:
            raise PolicyError(problems)
    return policy_set


def _console_host_problem(route: str, source: str, host: str) -> Problem:
    file, _, line = source.rpartition(":")
    return Problem(
        file or source,
        int(line) if line.isdigit() else 0,
        f"route {route!r}: hosts",
        host,
        "a host other than the console host (the console origin is never routed)",
    )


class PolicyStore:
    """Holds the current `PolicySet` of a list of policy files; see the module docstring."""

    def __init__(
        self,
        paths: Iterable[Path | str],
        *,
        on_change: Callable[[PolicySet], None] | None = None,
        registry: CollectorRegistry | None = None,
        console_host: str | None = None,
    ) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.console_host = console_host
        self.on_change = on_change
        self._counters = _counters(registry if registry is not None else REGISTRY)
        self._seen = self._fingerprint()
        self._current = load_gateway_policies(self.paths, console_host)

    @property
    def current(self) -> PolicySet:
        return self._current

    def reload(self) -> bool:
        """Load the files again; True if a valid policy was swapped in."""
        self._seen = self._fingerprint()
        try:
            policy_set = load_gateway_policies(self.paths, self.console_host)
        except PolicyError as exc:
            self._counters.failures.inc()
            log.error(
                "policy reload failed; the last good policy stays in force (%d problem(s)):\n%s",
                len(exc.problems),
                "\n".join(str(p) for p in exc.problems),
            )
            return False
        self._current = policy_set
        self._counters.reloads.inc()
        log.info(
            "policy reloaded: %d route(s) from %s",
            len(policy_set.routes),
            ", ".join(str(p) for p in self.paths),
        )
        if self.on_change is not None:
            try:
                self.on_change(policy_set)
            except Exception:
                # The new policy is in force either way; a listener's failure is its own.
                log.exception("policy on_change listener failed")
        return True

    async def watch(self, interval_s: float) -> None:
        """Poll the files every `interval_s` seconds; reload when their content changes.

        Runs until cancelled. A change is seen through modification time, size or content
        hash, so an edit that keeps the mtime (or a file replaced by rename) is noticed.
        """
        while True:
            await asyncio.sleep(interval_s)
            fingerprint = await asyncio.to_thread(self._fingerprint)
            if fingerprint != self._seen:
                self.reload()

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload whenever the process receives SIGHUP (on `loop`, never mid-request)."""
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _fingerprint(self) -> Fingerprint:
        entries = []
        for path in self.paths:
            try:
                stat = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries.append((str(path), stat.st_mtime_ns, stat.st_size, digest))
            except OSError as exc:
                entries.append((str(path), -1, -1, f"unreadable: {exc.__class__.__name__}"))
        return tuple(entries)
