"""The access workflow's stop: the last request counts are saved, but a silent Redis never
holds the gateway's shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore
from gateway.access.service import ACCESS, FINAL_FLUSH_WITHIN_S, access_ctx
from gateway.access.store import GrantReader
from gateway.clock import ManualClock
from tests.gateway.access.conftest import ORG, SAM, approved, service_app
from tests.gateway.access.relay import Relay


async def test_the_stop_saves_the_last_request_counts(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock, tmp_path: Path
) -> None:
    request_id = await approved(store)
    app = service_app(directory, clock, tmp_path)
    running = access_ctx(app)
    await anext(running)
    for _ in range(3):
        assert (await app[ACCESS].watcher.check(SAM.key, ORG)).grant is not None
    with pytest.raises(StopAsyncIteration):
        await anext(running)
    assert await directory.hget(keys.access_request(request_id), "requests") == b"3"


async def test_a_silent_redis_does_not_hold_the_stop_and_the_lost_counts_are_logged(
    store: AccessStore,
    directory: aioredis.Redis,
    clock: ManualClock,
    relay: Relay,
    relayed: aioredis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request_id = await approved(store)
    counted = await directory.hget(keys.access_request(request_id), "requests")
    app = service_app(relayed, clock, tmp_path)
    running = access_ctx(app)
    await anext(running)
    watcher = app[ACCESS].watcher
    # The checks reach Redis directly, as a fresh pool connection would; everything else
    # of the workflow goes through the relay, which now holds every byte.
    watcher._grants = GrantReader(directory)
    relay.frozen = True
    for _ in range(3):
        assert (await watcher.check(SAM.key, ORG)).grant is not None
    loop = asyncio.get_running_loop()
    stopping = loop.time()
    with caplog.at_level(logging.ERROR, logger="gateway.access.service"):
        async with asyncio.timeout(FINAL_FLUSH_WITHIN_S + 3):
            with pytest.raises(StopAsyncIteration):
                await anext(running)
    assert loop.time() - stopping < FINAL_FLUSH_WITHIN_S + 3
    (record,) = [r for r in caplog.records if r.name == "gateway.access.service"]
    assert "request counts not saved at shutdown" in record.getMessage()
    assert f"{request_id}: 3" in record.getMessage()
    assert f"no answer within {FINAL_FLUSH_WITHIN_S} s" in record.getMessage()
    assert await directory.hget(keys.access_request(request_id), "requests") == counted
