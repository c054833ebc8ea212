"""A revocation heard while a grant check is on its way back from Redis: the check answers
what Redis said (a live grant), and the in-flight set remembers the revocation, so the flow
that check authorises is aborted as it joins (see tests/gateway/test_proxy_hostile.py)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway.access import AccessStore
from gateway.access.watcher import GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows
from tests.gateway.access.conftest import ALICE, ORG, SAM, approved
from tests.gateway.access.test_watcher import HeldReader
from tests.gateway.access.trust import trusted


async def test_a_revocation_heard_during_a_check_is_remembered_for_its_flow(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    request_id = await approved(store, 3600, "write")
    in_flight = InFlightFlows()
    watcher = GrantWatcher(directory, clock, in_flight)
    reader = HeldReader(directory)
    watcher._grants = reader
    listening = asyncio.create_task(watcher.run())
    try:
        await trusted(watcher)
        checking = asyncio.create_task(watcher.check(SAM.key, ORG))
        await asyncio.wait_for(reader.read_done.wait(), 15)
        await store.revoke(request_id, ALICE)
        async with asyncio.timeout(15):  # heard while no flow of the grant is in flight
            while request_id not in in_flight._ended:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        reader.release.set()
        result = await checking
        assert result.grant is not None  # what Redis said when it was asked
        assert result.grant.grant_id == request_id
        assert in_flight._ended[request_id] == "grant_revoked"
        assert len(in_flight) == 0
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
