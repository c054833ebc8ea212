"""The sweeper: makes the time-driven transitions (lapse, expiry) so their notices go out.

Validity never waits for the sweeper: every grant check judges `expires_at` by the Clock.
The sweeper only turns "time is up" into a stored state and an event, each through the
same atomic script (`sweep.lua`), so a sweep racing an approval or a revoke ends in one
defined state. Several gateway instances may sweep at once: the script is idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.access.errors import AccessError
from gateway.access.store import AccessStore

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, store: AccessStore, interval_s: float = 1.0) -> None:
        self.store = store
        self.interval_s = interval_s

    async def sweep_once(self) -> list[tuple[str, str]]:
        """Lapse and expire whatever is due now; returns (request id, resulting state)."""
        pending, ending = await self.store.due()
        done: list[tuple[str, str]] = []
        for request_id in [*pending, *ending]:
            try:
                done.append((request_id, await self.store.sweep(request_id)))
            except AccessError as exc:
                log.warning("sweep of %s failed: %s", request_id, exc)
        return done

    async def run(self) -> None:
        """Sweep forever (an app background task); a failed round is logged and retried."""
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep round failed; retrying in %.1f s", self.interval_s)
            await asyncio.sleep(self.interval_s)
