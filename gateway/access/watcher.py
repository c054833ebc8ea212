"""The grant watcher: the live-grant check every proxied request makes, and its reactions.

`check(actor_key, org)` reads the live-grant pointer (`keys.live_grant`) together with the
account of the member it acts as, and judges both by the Clock at that instant. What it
read is cached ONLY while the subscription to `keys.grant_events_channel()` is healthy;
every workflow event drops the cached entry of its (actor, org), a `member_changed` event
(published by `member_changed` whenever a member's account changes) drops every entry of
that org, and any loss of the subscription drops the whole cache and stops caching until
it is back. A read racing an event is never cached (a generation counter).

A revoked or expired grant's in-flight flows (responses, websockets) are ended at once
through `InFlightFlows.abort_grant`; grants whose events may have been missed while the
subscription was down are re-checked when it comes back, and so are the grants of an org
whose member changed (a member disabled or marked not impersonable ends their flows).
Requests made under each grant are counted in memory and added to the request's
`requests` field every second (the counts shown in the end-of-grant summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.errors import AccessUnavailable
from gateway.access.events import MEMBER_CHANGED
from gateway.access.model import RequestState
from gateway.access.store import (
    GrantCheck,
    GrantReader,
    ParsedGrant,
    grant_check_from,
    parse_grant,
)
from gateway.clock import Clock
from gateway.flow import InFlightFlows

log = logging.getLogger(__name__)

PING_EVERY_S = 5.0
RECONNECT_S = 1.0
FLUSH_EVERY_S = 1.0


class GrantWatcher:
    def __init__(self, redis: aioredis.Redis, clock: Clock, in_flight: InFlightFlows) -> None:
        self.redis = redis
        self.clock = clock
        self.in_flight = in_flight
        self.healthy = False  # the subscription is up: caching is allowed
        self._grants = GrantReader(redis)
        # parsed once per read; the Clock still judges its times on every check
        self._cache: dict[tuple[str, str], ParsedGrant] = {}
        self._generation = 0
        self._usage: Counter[str] = Counter()
        self._seen: dict[str, tuple[str, str]] = {}  # grant id -> (actor key, org)

    async def check(self, actor_key: str, org: str) -> GrantCheck:
        """The grant of `actor_key` in `org` now; raises AccessUnavailable if Redis is down."""
        key = (actor_key, org)
        cached = self._cache.get(key) if self.healthy else None
        if cached is None:
            generation = self._generation
            try:
                facts = await self._grants.read(actor_key, org)
            except Exception as exc:
                # SECURITY: no answer from Redis grants nothing (fail closed).
                raise AccessUnavailable("unavailable", f"grant store unreachable: {exc}") from exc
            cached = parse_grant(facts)
            if self.healthy and generation == self._generation:
                self._cache[key] = cached
        # SECURITY: time is judged on every check, cached or not.
        result = cached.at(self.clock.now())
        if result.grant is not None:
            self._usage[result.grant.grant_id] += 1
            self._seen[result.grant.grant_id] = key
        return result

    def on_event(self, data: bytes | str) -> bool:
        """One published event: drop what it invalidates, end what it ended.

        True when live grants must be re-checked against Redis (a member changed).
        """
        self._generation += 1
        try:
            event = json.loads(data)
            if event["event"] == MEMBER_CHANGED:
                org = str(event["org"])
                for cached_key in [k for k in self._cache if k[1] == org]:
                    del self._cache[cached_key]
                return True
            actor_key, org = str(event["actor_key"]), str(event["org"])
            grant_id, name = str(event["id"]), str(event["event"])
        except (ValueError, KeyError, TypeError):
            # Unreadable: trust no cached entry.
            log.warning("unreadable grant event %r; dropping the whole cache", data)
            self._cache.clear()
            return False
        self._cache.pop((actor_key, org), None)
        if name in (RequestState.REVOKED, RequestState.EXPIRED):
            self._seen.pop(grant_id, None)
            ended = self.in_flight.abort_grant(grant_id, f"grant_{name}")
            if ended:
                log.info("grant %s %s: ended %d in-flight flow(s)", grant_id, name, ended)
        return False

    def _subscribed(self) -> None:
        # SECURITY: a read begun before the subscription was up may predate an event it
        # never heard of; the new generation keeps such a read out of the cache.
        self._generation += 1
        self.healthy = True

    def _lost(self) -> None:
        self.healthy = False
        self._generation += 1
        self._cache.clear()

    async def _recheck(self) -> None:
        """After a gap in the subscription, end in-flight flows of grants that ended in it."""
        now = self.clock.now()
        for grant_id, key in list(self._seen.items()):
            facts = await self._grants.read(*key)
            result = grant_check_from(facts, now)
            if result.grant is None or result.grant.grant_id != grant_id:
                self._seen.pop(grant_id, None)
                self.in_flight.abort_grant(grant_id, result.error or "grant_ended")

    async def flush_usage(self) -> None:
        """Add the requests counted since the last flush to their grants' records.

        One MULTI/EXEC: when it does not run (Redis unreachable), the counts are kept for
        the next flush instead of being lost. Once it ran, every count Redis took is in:
        one it refused (a damaged record) is logged and dropped, never tried again with
        the others, which would add theirs twice. The app flushes once more when it stops.
        """
        if not self._usage:
            return
        usage, self._usage = self._usage, Counter()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for grant_id, count in usage.items():
                    pipe.hincrby(keys.access_request(grant_id), "requests", count)
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._usage.update(usage)
            raise
        for (grant_id, count), result in zip(usage.items(), results, strict=True):
            if isinstance(result, Exception):
                log.warning("%d request(s) of grant %s not counted: %s", count, grant_id, result)

    async def listen_once(self) -> None:
        """Subscribe and handle events until the subscription fails (then raise)."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(keys.grant_events_channel())
            loop = asyncio.get_running_loop()
            last_ping = last_flush = loop.time()
            while True:
                message = await pubsub.get_message(timeout=0.5)
                if message is not None:
                    if message["type"] == "subscribe":
                        self._subscribed()
                        await self._recheck()
                    elif message["type"] == "message" and self.on_event(message["data"]):
                        await self._recheck()
                now = loop.time()
                if now - last_ping >= PING_EVERY_S:
                    await pubsub.ping()
                    last_ping = now
                if now - last_flush >= FLUSH_EVERY_S:
                    await self.flush_usage()
                    last_flush = now
        finally:
            self._lost()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def run(self) -> None:
        """Listen forever (an app background task), reconnecting after any failure."""
        while True:
            try:
                await self.listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("grant events subscription lost (%s); not caching until back", exc)
            await asyncio.sleep(RECONNECT_S)
