"""Whether Redis is fit to serve, as `/.gateway/readyz` reports it: it answers, and it may
not evict keys.

The gateway refuses an evicting Redis at start-up, but cannot ask one that is unreachable
then, and a Redis can change later (a Sentinel failover to a differently configured
replica, a `CONFIG SET`). So readyz asks again whenever Redis answers after it did not,
and at least every `EVICTION_RECHECK_S` (every time while the answer is a refusal, so that
a fixed Redis is seen at once); the proxied request path never pays for it.

    readiness = RedisReadiness()
    verdict = await readiness.verdict(client, now=loop.time())
    # None: ready; "down", or the reason an evicting Redis is refused
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from audit.eviction import eviction_refusal

log = logging.getLogger(__name__)

EVICTION_RECHECK_S = 60.0
PING_TIMEOUT_S = 1.0
DOWN = "down"


class RedisReadiness:
    """The last eviction verdict and when it was reached; one per app."""

    def __init__(self, *, recheck_s: float = EVICTION_RECHECK_S) -> None:
        self.recheck_s = recheck_s
        self._checked_at: float | None = None  # None: ask at the next answer
        self._refusal: str | None = None

    async def verdict(self, client: aioredis.Redis, *, now: float) -> str | None:
        """None when Redis answers and keeps its keys; DOWN, or why it is refused."""
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await client.ping()
                if self._due(now):
                    self._record(await eviction_refusal(client), now)
        except Exception as exc:
            # SECURITY: fail closed: an unanswered probe is not ready, and the setting is
            # asked again once Redis answers (it may be another server by then).
            log.warning("readyz: redis not answering: %s", exc)
            self._checked_at = None
            return DOWN
        return self._refusal

    def _due(self, now: float) -> bool:
        return (
            self._checked_at is None
            or self._refusal is not None
            or now - self._checked_at >= self.recheck_s
        )

    def _record(self, refusal: str | None, now: float) -> None:
        if refusal is not None and refusal != self._refusal:
            log.error("readyz: refusing an evicting Redis: %s", refusal)
        elif refusal is None and self._refusal is not None:
            log.info("readyz: Redis no longer evicts keys; ready again")
        self._refusal, self._checked_at = refusal, now
