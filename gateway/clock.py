"""The one clock: every time-driven rule is decided by a `Clock` against stored timestamps.

Redis key TTLs are only garbage collection; expiry, lapse, idle timeouts and lockouts
are judged by `clock.now()` on every check. Tests drive time with `ManualClock`.

    clock = ManualClock(1_700_000_000.0)
    clock.advance(3600)
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time, as stored in Redis)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told; for tests and replayable simulations."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock never goes back: advance({seconds})")
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when
