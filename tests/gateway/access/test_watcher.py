"""The grant watcher's cache: what it may keep, and when it must read Redis again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore
from gateway.access.store import GrantFacts, GrantReader
from gateway.access.watcher import GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows
from tests.gateway.access.conftest import ALICE, ORG, SAM, SUE, approved
from tests.gateway.access.trust import started_listening, trusted


class HeldReader(GrantReader):
    """A real reader whose answer, once read from Redis, is held until released."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self, actor_key: str, org: str) -> GrantFacts:
        facts = await super().read(actor_key, org)
        self.read_done.set()
        await self.release.wait()
        return facts


async def test_a_read_begun_before_the_subscription_is_never_cached(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    request_id = await approved(store, 3600, "write")
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    reader = HeldReader(directory)
    watcher._grants = reader
    # The read happens while no subscription is up: the revocation below is never heard.
    first = asyncio.create_task(watcher.check(SAM.key, ORG))
    await asyncio.wait_for(reader.read_done.wait(), 15)
    await store.revoke(request_id, ALICE)
    listening = asyncio.create_task(watcher.run())
    try:
        await trusted(watcher)
        reader.release.set()
        assert (await first).grant is not None  # what Redis said when it was asked
        again = await watcher.check(SAM.key, ORG)
        assert again.grant is None
        assert again.error == "grant_revoked"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_a_cached_grant_is_judged_by_the_clock_on_every_check(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    await approved(store, 600, "read")
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    listening = await started_listening(watcher)
    try:
        first = await watcher.check(SAM.key, ORG)
        assert first.grant is not None
        assert (SAM.key, ORG) in watcher._cache  # the parsed grant is what is kept
        # No event, no sweeper: only the Clock moves. The cached entry must not outlive it.
        clock.advance(599)
        assert (await watcher.check(SAM.key, ORG)).grant is not None
        clock.advance(1)
        expired = await watcher.check(SAM.key, ORG)
        assert expired.grant is None
        assert expired.error == "grant_expired"
        assert (SAM.key, ORG) in watcher._cache  # judged from the cache, not re-read
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_an_event_drops_the_parsed_grant(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    request_id = await approved(store, 600, "write")
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    listening = await started_listening(watcher)
    try:
        assert (await watcher.check(SAM.key, ORG)).grant is not None
        assert (SAM.key, ORG) in watcher._cache
        await store.revoke(request_id, ALICE)
        async with asyncio.timeout(15):
            while (SAM.key, ORG) in watcher._cache:  # noqa: ASYNC110 (the event drops it)
                await asyncio.sleep(0.01)
        revoked = await watcher.check(SAM.key, ORG)
        assert revoked.grant is None
        assert revoked.error == "grant_revoked"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_request_counts_survive_a_flush_redis_refuses(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock, tmp_path: Path
) -> None:
    request_id = await approved(store, 3600, "write")
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    for _ in range(3):
        assert (await watcher.check(SAM.key, ORG)).grant is not None
    # A Redis that is not there (nothing listens on this socket): the flush fails.
    unreachable = aioredis.Redis(unix_socket_path=str(tmp_path / "none.sock"))
    try:
        watcher.redis = unreachable
        with pytest.raises(aioredis.ConnectionError):
            await watcher.flush_usage()
    finally:
        await unreachable.aclose()
    watcher.redis = directory
    assert (await watcher.check(SAM.key, ORG)).grant is not None
    await watcher.flush_usage()
    assert await directory.hget(keys.access_request(request_id), "requests") == b"4"
    await watcher.flush_usage()  # nothing counted since: nothing added twice
    assert await directory.hget(keys.access_request(request_id), "requests") == b"4"


async def test_a_count_redis_refuses_is_not_added_twice_to_the_others(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    granted: dict[str, str] = {}
    for requester in (SAM, SUE):
        request_id = await approved(store, 3600, "read", requester=requester)
        granted[requester.key] = request_id
    # One damaged count: Redis refuses its HINCRBY inside the EXEC that applies the other.
    await directory.hset(keys.access_request(granted[SUE.key]), "requests", "many")
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    for requester in (SAM, SAM, SUE):
        assert (await watcher.check(requester.key, ORG)).grant is not None
    await watcher.flush_usage()
    await watcher.flush_usage()  # nothing counted since: nothing is added again
    assert await directory.hget(keys.access_request(granted[SAM.key]), "requests") == b"2"
    assert await directory.hget(keys.access_request(granted[SUE.key]), "requests") == b"many"


async def test_a_flush_cancelled_before_redis_ran_it_keeps_its_counts(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock, redis_url: str
) -> None:
    request_id = await approved(store, 3600, "write")
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    for _ in range(3):
        assert (await watcher.check(SAM.key, ORG)).grant is not None
    admin = aioredis.from_url(redis_url)
    try:
        # Writes wait while the server is paused: the flush is under way, not yet applied
        # (the cancelled client drops its connection, so Redis never runs it).
        await admin.client_pause(300, all=False)
        flushing = asyncio.create_task(watcher.flush_usage())
        await asyncio.sleep(0.1)
        flushing.cancel()  # as the app's stop cancels the watcher mid-flush
        with pytest.raises(asyncio.CancelledError):
            await flushing
    finally:
        await admin.aclose()
    await watcher.flush_usage()  # the stop's last flush
    assert await directory.hget(keys.access_request(request_id), "requests") == b"3"
