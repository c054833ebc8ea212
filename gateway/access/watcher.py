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

A subscription is healthy only while it hears this instance's own heartbeats
(`heartbeat.Heartbeats`): one is published every PING_EVERY_S through the client that
writes, and a heartbeat not heard back within ANSWER_WITHIN_S (a connection dropped without
a reset by a firewall or NAT, or a subscription left on an old master that still answers
but no longer receives the writes) means the subscription is lost, as does a round of the
watcher's own Redis work that does not finish in that time. Other instances' heartbeats are
ignored. The re-check of live grants reads all of them in one pipelined round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.errors import AccessUnavailable
from gateway.access.events import MEMBER_CHANGED
from gateway.access.heartbeat import HEARTBEAT, Heartbeats, heartbeat_of
from gateway.access.model import RequestState
from gateway.access.store import (
    GrantCheck,
    GrantReader,
    ParsedGrant,
    grant_check_from,
    parse_grant,
)
from gateway.access.text import as_text
from gateway.clock import Clock
from gateway.flow import InFlightFlows
from gateway.listeners import keep_listening

log = logging.getLogger(__name__)

PING_EVERY_S = 1.0
# A healthy subscription hears a heartbeat at once; one not heard back this long after it
# was published means the subscription may be missing events.
ANSWER_WITHIN_S = 3.0
FLUSH_EVERY_S = 1.0
# How long a flushed batch's marker is kept at most (it is deleted once its reply came):
# far longer than any retry of that batch.
FLUSH_MARKER_TTL_S = 3600

# One batch of request counts, applied at most once. KEYS[1]: the batch's marker; KEYS[2..]:
# the requests' hashes; ARGV[1]: the marker's TTL; ARGV[2..]: the counts. Returns {} when
# the batch was applied before, else {1} and then the positions of counts Redis refused
# (a damaged record) with their errors.
_FLUSH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {} end
local out = {1}
for i = 2, #KEYS do
  local reply = {err = 'no such request'}
  if redis.call('EXISTS', KEYS[i]) == 1 then
    reply = redis.pcall('HINCRBY', KEYS[i], 'requests', ARGV[i])
  end
  if type(reply) == 'table' and reply.err then
    out[#out + 1] = i - 1
    out[#out + 1] = reply.err
  end
end
return out
"""


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
        # A batch of counts sent to Redis without a reply yet: (its token, its counts).
        self._unconfirmed: tuple[str, Counter[str]] | None = None
        self._flush = redis.register_script(_FLUSH)
        self._seen: dict[str, tuple[str, str]] = {}  # grant id -> (actor key, org)
        # Names this instance's heartbeats (one watcher per gateway process).
        self.heartbeat_token = secrets.token_hex(16)

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
        try:
            event: Any = json.loads(data)
        except (ValueError, RecursionError):
            event = None  # unreadable: judged below
        if isinstance(event, dict) and event.get("event") == HEARTBEAT:
            # Changes nothing: listen_once counts its own, and others' mean nothing here.
            return False
        self._generation += 1
        try:
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
        seen = list(self._seen.items())
        # One pipelined round trip for all of them: thousands of live grants read one by
        # one could outlast the round limit and make the subscription flap.
        read = await self._grants.read_many([key for _, key in seen])
        now = self.clock.now()
        for (grant_id, _), facts in zip(seen, read, strict=True):
            result = grant_check_from(facts, now)
            if result.grant is None or result.grant.grant_id != grant_id:
                self._seen.pop(grant_id, None)
                self.in_flight.abort_grant(grant_id, result.error or "grant_ended")

    async def flush_usage(self) -> None:
        """Add the requests counted since the last flush to their grants' records.

        Each batch of counts carries a token and is applied by one script at most once
        (`_FLUSH`): a batch whose reply never came (Redis unreachable, or the flush
        cancelled after Redis ran it) is sent again with the same token before anything
        newer, so its counts are neither lost nor added twice. A count Redis refused (a
        damaged record) is logged and dropped. The app flushes once more when it stops.
        """
        for _ in range(2):  # the unconfirmed batch, if any, then the counts since
            if self._unconfirmed is None:
                if not self._usage:
                    return
                self._unconfirmed = (secrets.token_hex(12), self._usage)
                self._usage = Counter()
            token = self._unconfirmed[0]
            await self._flush_batch(*self._unconfirmed)
            self._unconfirmed = None
            # Confirmed: the batch is never sent again, so its marker may go (its TTL
            # removes it anyway if this delete does not happen).
            await self.redis.delete(keys.usage_flush(token))

    def unflushed(self) -> Counter[str]:
        """Request counts by grant id not yet confirmed saved (a batch sent without a reply
        may have been applied all the same)."""
        counts = Counter(self._usage)
        if self._unconfirmed is not None:
            counts.update(self._unconfirmed[1])
        return counts

    async def _flush_batch(self, token: str, usage: Counter[str]) -> None:
        grant_ids = list(usage)
        reply: Any = await self._flush(
            keys=[keys.usage_flush(token), *(keys.access_request(g) for g in grant_ids)],
            args=[str(FLUSH_MARKER_TTL_S), *(str(usage[g]) for g in grant_ids)],
            client=self.redis,
        )
        refused = list(reply)[1:]
        for position, error in zip(refused[0::2], refused[1::2], strict=True):
            grant_id = grant_ids[int(position) - 1]
            log.warning(
                "%d request(s) of grant %s not counted: %s",
                usage[grant_id],
                grant_id,
                as_text(error),
            )

    async def listen_once(self) -> None:
        """Subscribe and handle events until the subscription fails (then raise)."""
        channel = keys.grant_events_channel()
        pubsub = self.redis.pubsub()
        loop = asyncio.get_running_loop()
        beats = Heartbeats(self.heartbeat_token, loop.time())
        try:
            await pubsub.subscribe(channel)
            # The first heartbeat goes once the server confirmed the subscription (one
            # published before that could pass it), then one every PING_EVERY_S.
            confirmed = False
            last_beat = -math.inf
            last_flush = loop.time()
            while True:
                # SECURITY: none of the watcher's own Redis work may stall this loop while
                # the cache is trusted: a round that does not finish in time ends it.
                try:
                    async with asyncio.timeout(ANSWER_WITHIN_S):
                        message = await pubsub.get_message(timeout=0.5)
                        if message is not None and message["type"] == "subscribe":
                            confirmed = True
                        elif message is not None and message["type"] == "message":
                            await self._heard(message["data"], beats)
                        now = loop.time()
                        if confirmed and now - last_beat >= PING_EVERY_S:
                            # SECURITY: through the client that writes, so that it comes
                            # back only on a subscription that hears the writes' events.
                            await self.redis.publish(channel, beats.next_message(now))
                            last_beat = now
                        if now - last_flush >= FLUSH_EVERY_S:
                            await self.flush_usage()
                            last_flush = now
                except TimeoutError as exc:
                    raise ConnectionError(
                        f"grant-event upkeep took over {ANSWER_WITHIN_S} s"
                    ) from exc
                # SECURITY: a subscription that does not hear our own heartbeat in time is
                # silent (a connection dropped without a reset) or on a server our writes no
                # longer reach (an old master): either way it may miss revocations.
                if beats.overdue(loop.time(), ANSWER_WITHIN_S):
                    raise ConnectionError(
                        f"own heartbeat not heard back within {ANSWER_WITHIN_S} s on the "
                        "grant events subscription"
                    )
        finally:
            self._lost()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _heard(self, data: bytes | str, beats: Heartbeats) -> None:
        beat = heartbeat_of(data)
        if beat is None:
            if self.on_event(data):
                await self._recheck()
            return
        token, counter = beat
        # SECURITY: only our own heartbeat, one we await, proves that this subscription
        # hears what our writes publish; another instance's proves nothing about it.
        if token == beats.token and beats.heard(counter) and not self.healthy:
            self._subscribed()
            await self._recheck()  # events of the gap before may have been missed

    async def run(self) -> None:
        """Listen forever (an app background task), reconnecting after any failure."""
        await keep_listening(self.listen_once, "grant events", "not caching until back")
