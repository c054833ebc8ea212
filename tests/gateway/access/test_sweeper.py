"""The sweeper over indexes that name a request whose record is gone (a damaged store):
the index entry is dropped once, instead of failing every second forever."""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore, Sweeper
from gateway.clock import ManualClock
from tests.gateway.access.conftest import approved


async def test_an_index_entry_without_its_request_is_dropped(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    grant_id = await approved(store, duration_s=600)
    await directory.zadd(keys.pending_requests(), {"gone1": 1.0})
    await directory.zadd(keys.live_grants(), {"gone2": 1.0})
    clock.advance(601)
    done = dict(await Sweeper(store).sweep_once())
    assert done == {"gone1": "gone", "gone2": "gone", grant_id: "expired"}
    assert await directory.zcard(keys.pending_requests()) == 0
    assert await directory.zcard(keys.live_grants()) == 0
    assert await Sweeper(store).sweep_once() == []
