"""The re-check of live grants after a reconnect: thousands of them over a slow network must
neither outlast the round limit (and make the subscription flap) nor be matched wrongly."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore
from gateway.access.store import GrantReader
from gateway.access.watcher import ANSWER_WITHIN_S, GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows
from tests.gateway.access.conftest import ORG, SAM, approved
from tests.gateway.access.relay import Relay
from tests.gateway.access.trust import trusted

LIVE_GRANTS = 2000
ROUND_TRIP_S = 0.002  # a network between the gateway and Redis, not a local socket
REVOKED = (7, 1500)


def _actor(i: int) -> str:
    return f"staff:s{i}"


async def _many_live_grants(store: AccessStore, redis: aioredis.Redis) -> None:
    """LIVE_GRANTS live grants for bob of acme, one per staff member, shaped as approved."""
    await approved(store)
    pointer: dict[Any, Any] = await redis.hgetall(keys.live_grant(SAM.key, ORG))
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(LIVE_GRANTS):
            fields = {**pointer, b"id": f"g{i}", b"actor_id": f"s{i}"}
            pipe.hset(keys.live_grant(_actor(i), ORG), mapping=fields)
            pipe.hset(keys.access_request(f"g{i}"), mapping={"id": f"g{i}", "requests": 0})
        await pipe.execute()


async def test_thousands_of_live_grants_are_rechecked_within_the_round_limit(
    store: AccessStore,
    directory: aioredis.Redis,
    clock: ManualClock,
    relay: Relay,
    relayed: aioredis.Redis,
) -> None:
    await _many_live_grants(store, directory)
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    for i in range(LIVE_GRANTS):  # each seen in use by this instance
        assert (await watcher.check(_actor(i), ORG)).grant is not None
    # Revoked while this instance was not subscribed: only the re-check can tell.
    for i in REVOKED:
        await directory.hset(keys.live_grant(_actor(i), ORG), "state", "revoked")
    watcher.redis = relayed
    watcher._grants = GrantReader(relayed)
    relay.reply_delay_s = ROUND_TRIP_S
    listening = asyncio.create_task(watcher.run())
    try:
        await trusted(watcher)
        loop = asyncio.get_running_loop()
        until = loop.time() + ANSWER_WITHIN_S + 1.5  # well past the round limit
        while loop.time() < until:
            assert watcher.healthy  # no flapping: the re-check fitted in one round
            await asyncio.sleep(0.05)
        assert {f"g{i}" for i in REVOKED}.isdisjoint(watcher._seen)
        assert len(watcher._seen) == LIVE_GRANTS - len(REVOKED)
        assert all(watcher._seen[f"g{i}"] == (_actor(i), ORG) for i in (0, 8, 1499, 1999))
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
