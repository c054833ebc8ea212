"""The grant watcher over a connection that goes silent, and usage counts whose reply is lost.

A relay between the watcher and Redis (`relay.Relay`, the `relay` fixture) holds bytes without
closing anything, as a firewall or NAT that drops a long-lived connection does.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore
from gateway.access.store import GrantReader
from gateway.access.watcher import ANSWER_WITHIN_S, PING_EVERY_S, GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows
from tests.gateway.access.conftest import ALICE, ORG, SAM, approved
from tests.gateway.access.relay import Relay
from tests.gateway.access.trust import trusted


def _healthy(watcher: GrantWatcher) -> bool:
    return watcher.healthy


async def test_a_silent_subscription_stops_the_cache_before_a_revoked_grant_is_served(
    store: AccessStore,
    directory: aioredis.Redis,
    clock: ManualClock,
    relay: Relay,
    relayed: aioredis.Redis,
) -> None:
    grant_id = await approved(store)
    watcher = GrantWatcher(relayed, clock, InFlightFlows())
    # Only the subscription (and the watcher's own upkeep) goes through the relay; the
    # checks' reads reach Redis directly, as those of a fresh pool connection would.
    watcher._grants = GrantReader(directory)
    listening = asyncio.create_task(watcher.run())
    try:
        await trusted(watcher)
        assert (await watcher.check(SAM.key, ORG)).grant is not None  # cached from here
        relay.frozen = True
        await store.revoke(grant_id, ALICE)  # its event never arrives
        async with asyncio.timeout(PING_EVERY_S + ANSWER_WITHIN_S + 3):
            while (await watcher.check(SAM.key, ORG)).grant is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not _healthy(watcher)  # it stopped caching; the check read Redis
        assert (await watcher.check(SAM.key, ORG)).error == "grant_revoked"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_a_flush_cancelled_after_redis_ran_it_is_not_counted_twice(
    store: AccessStore,
    directory: aioredis.Redis,
    clock: ManualClock,
    relay: Relay,
    relayed: aioredis.Redis,
) -> None:
    request_id = await approved(store)
    watcher = GrantWatcher(relayed, clock, InFlightFlows())
    assert (await watcher.check(SAM.key, ORG)).grant is not None
    await watcher.flush_usage()  # connected, and the script loaded, before replies are held
    for _ in range(3):
        assert (await watcher.check(SAM.key, ORG)).grant is not None
    relay.holding_replies = True
    flushing = asyncio.create_task(watcher.flush_usage())
    counted = keys.access_request(request_id)
    async with asyncio.timeout(15):  # Redis ran it; its reply is held in the relay
        while await directory.hget(counted, "requests") == b"1":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    flushing.cancel()  # as the app's stop cancels the watcher mid-flush
    with pytest.raises(asyncio.CancelledError):
        await flushing
    relay.holding_replies = False
    assert (await watcher.check(SAM.key, ORG)).grant is not None  # one more since
    await watcher.flush_usage()  # the stop's last flush: the batch again, then the new one
    assert await directory.hget(keys.access_request(request_id), "requests") == b"5"
    await watcher.flush_usage()
    assert await directory.hget(keys.access_request(request_id), "requests") == b"5"
    assert await directory.keys(keys.usage_flush("*")) == []  # confirmed markers go
