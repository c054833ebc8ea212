"""The grant watcher across a failover: a subscription left on a server the writes no longer
reach must stop the cache; other instances' heartbeats must change nothing.

Two real redis-servers: the writes move to the second (a promoted replica holding the same
data) while the subscription stays connected to the first, which still answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from gateway import keys
from gateway.access import AccessStore
from gateway.access.store import GrantFacts, GrantReader
from gateway.access.watcher import ANSWER_WITHIN_S, PING_EVERY_S, GrantWatcher
from gateway.clock import ManualClock
from gateway.embedded_redis import EmbeddedRedis
from gateway.flow import InFlightFlows
from tests.gateway.access.conftest import ALICE, ORG, SAM, approved
from tests.gateway.access.trust import started_listening, trusted


class SubscribedElsewhere(aioredis.Redis):
    """A real client whose subscriptions reach another server than its commands: a pool
    that resolved the master before a failover for the one, after it for the other."""

    def __init__(self, url: str, subscriptions: aioredis.Redis) -> None:
        super().__init__(connection_pool=aioredis.ConnectionPool.from_url(url))
        self.subscriptions = subscriptions

    def pubsub(self, **kwargs: Any) -> PubSub:
        return self.subscriptions.pubsub(**kwargs)


class CountingReader(GrantReader):
    """A real reader that counts its batched re-checks."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.rechecks = 0

    async def read_many(self, pairs: Sequence[tuple[str, str]]) -> list[GrantFacts]:
        self.rechecks += 1
        return await super().read_many(pairs)


async def _copy(source: aioredis.Redis, target: aioredis.Redis) -> None:
    for key in await source.keys("*"):
        dumped = await source.dump(key)
        assert dumped is not None
        await target.restore(key, 0, dumped, replace=True)


async def test_a_subscription_left_on_the_old_master_stops_the_cache_within_the_bound(
    store: AccessStore,
    directory: aioredis.Redis,
    second_redis: aioredis.Redis,
    clock: ManualClock,
) -> None:
    grant_id = await approved(store)
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    listening = await started_listening(watcher)
    try:
        assert (await watcher.check(SAM.key, ORG)).grant is not None
        assert (SAM.key, ORG) in watcher._cache  # trusted from here
        # The failover: the second server holds the data and takes the writes; the
        # subscription stays on the first, which still answers everything it is sent.
        await _copy(directory, second_redis)
        watcher.redis = second_redis
        watcher._grants = GrantReader(second_redis)
        await AccessStore(second_redis, clock).revoke(grant_id, ALICE)  # unheard
        assert await directory.ping()
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        # The bound is PING_EVERY_S + ANSWER_WITHIN_S plus one 0.5 s poll; 2.5 s more of
        # slack for a loaded machine. Without the heartbeat the cache is trusted for ever.
        bound = PING_EVERY_S + ANSWER_WITHIN_S + 3
        async with asyncio.timeout(bound):
            while (await watcher.check(SAM.key, ORG)).grant is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert loop.time() - revoked_at <= bound
        assert (await watcher.check(SAM.key, ORG)).error == "grant_revoked"
        # Back on a subscription that hears the writes (the new master): trusted again,
        # and the grant stays revoked.
        await trusted(watcher)
        assert (await watcher.check(SAM.key, ORG)).error == "grant_revoked"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_a_subscription_on_another_server_than_the_writes_is_never_trusted(
    store: AccessStore,
    directory: aioredis.Redis,
    second_redis: aioredis.Redis,
    second_redis_server: EmbeddedRedis,
    clock: ManualClock,
) -> None:
    grant_id = await approved(store, duration_s=3600)
    await _copy(directory, second_redis)
    writer = SubscribedElsewhere(second_redis_server.url, directory)
    watcher = GrantWatcher(writer, clock, InFlightFlows())
    listening = asyncio.create_task(watcher.run())
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + PING_EVERY_S + ANSWER_WITHIN_S + 0.5  # past a reconnect
        revoked = False
        while loop.time() < until:
            assert not watcher.healthy
            checked = await watcher.check(SAM.key, ORG)
            assert not watcher._cache  # nothing kept
            if revoked:
                assert checked.error == "grant_revoked"
            elif loop.time() > until - 2:
                await AccessStore(second_redis, clock).revoke(grant_id, ALICE)
                revoked = True
            await asyncio.sleep(0.05)
        assert revoked
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await writer.aclose(close_connection_pool=True)


async def test_other_instances_heartbeats_neither_drop_the_cache_nor_recheck(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    await approved(store)
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    reader = CountingReader(directory)
    watcher._grants = reader
    other = GrantWatcher(directory, clock, InFlightFlows())  # another gateway instance
    listening = [await started_listening(watcher), await started_listening(other)]
    try:
        assert (await watcher.check(SAM.key, ORG)).grant is not None
        generation, rechecks = watcher._generation, reader.rechecks
        channel = keys.grant_events_channel()
        for n in range(1, 50):  # and some heartbeats of no instance at all
            beat = {"event": "heartbeat", "from": "someone-else", "n": n}
            assert await directory.publish(channel, json.dumps(beat)) == 2
        await asyncio.sleep(PING_EVERY_S * 2.5)  # the other instance's own, too
        assert watcher.healthy
        assert (SAM.key, ORG) in watcher._cache
        assert watcher._generation == generation
        assert reader.rechecks == rechecks
    finally:
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
