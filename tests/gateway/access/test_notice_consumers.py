"""The notices group's consumers: a stopping instance removes its own when it holds no
pending event, idle consumers without pending events are pruned, and no pending event is
ever dropped with a consumer (real Redis 6.2, real access service)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit.errors import AuditUnavailable
from gateway import keys
from gateway.access import AccessStore
from gateway.access.mail import MailQueue
from gateway.access.notices import GROUP, Notices
from gateway.access.service import ACCESS, access_ctx
from gateway.clock import ManualClock
from tests.gateway.access.conftest import ORG, SUE, service_app
from tests.gateway.access.relay import Relay

CONSOLE = "https://gateway.localhost:8443"


async def _failing(body: Mapping[str, Any]) -> int:
    raise AuditUnavailable("the audit stream refused the frame")


async def _recorded(body: Mapping[str, Any]) -> int:
    return 0


@pytest.fixture
def queue(directory: aioredis.Redis, clock: ManualClock) -> MailQueue:
    return MailQueue(directory, clock)


def _notices(
    directory: aioredis.Redis, store: AccessStore, queue: MailQueue, name: str, *, ok: bool
) -> Notices:
    return Notices(
        directory,
        store,
        queue,
        console_url=CONSOLE,
        audit=_recorded if ok else _failing,
        consumer=name,
    )


async def _file(store: AccessStore, n: int = 0) -> None:
    await store.file(
        SUE, org=ORG, member="frank", justification=f"ticket {n}: slow pages",
        duration_s=600, scope="read",
    )  # fmt: skip


async def _consumers(redis: aioredis.Redis) -> dict[str, int]:
    infos: Any = await redis.xinfo_consumers(keys.access_outbox(), GROUP)
    return {info["name"].decode(): int(info["pending"]) for info in infos}


async def _pending(redis: aioredis.Redis) -> int:
    summary: Any = await redis.xpending(keys.access_outbox(), GROUP)
    return int(summary["pending"])


async def _idle_at_least(redis: aioredis.Redis, names: set[str], ms: int) -> None:
    """Wait (generously bounded) until every consumer named is idle at least `ms`."""
    async with asyncio.timeout(30):
        while True:
            infos: Any = await redis.xinfo_consumers(keys.access_outbox(), GROUP)
            idle = {info["name"].decode(): int(info["idle"]) for info in infos}
            if all(idle.get(name, 0) >= ms for name in names):
                return
            await asyncio.sleep(0.02)


async def _after_one_event(
    directory: aioredis.Redis, store: AccessStore, queue: MailQueue, name: str, *, ok: bool
) -> Notices:
    """One request filed; the consumer `name` reads its event (handled only when `ok`)."""
    await _file(store)
    notices = _notices(directory, store, queue, name, ok=ok)
    assert await notices.process_once() == (1 if ok else 0)
    return notices


async def test_a_stopping_instance_without_pending_events_removes_its_consumer(
    store: AccessStore, queue: MailQueue, directory: aioredis.Redis
) -> None:
    notices = await _after_one_event(directory, store, queue, "a", ok=True)
    assert await _consumers(directory) == {"a": 0}
    assert await notices.leave() is True
    assert await _consumers(directory) == {}
    assert await notices.leave() is False  # already gone: nothing to do, no error


async def test_a_stopping_instance_with_a_pending_event_keeps_it(
    store: AccessStore, queue: MailQueue, directory: aioredis.Redis
) -> None:
    stuck = await _after_one_event(directory, store, queue, "stuck", ok=False)
    assert await stuck.leave() is False
    assert await _consumers(directory) == {"stuck": 1}
    # Another instance takes the event over and handles it; then "stuck" is prunable.
    other = _notices(directory, store, queue, "other", ok=True)
    entries: Any = await directory.xpending_range(keys.access_outbox(), GROUP, "-", "+", 10)
    await directory.xclaim(keys.access_outbox(), GROUP, "other", 0, [entries[0]["message_id"]])
    assert await other.process_once() == 1
    assert await other.prune(idle_ms=0) == ["stuck"]
    assert await _consumers(directory) == {"other": 0}


async def test_leave_without_a_group_or_a_reachable_redis_says_so_and_never_raises(
    store: AccessStore,
    queue: MailQueue,
    directory: aioredis.Redis,
    relay: Relay,
    relayed: aioredis.Redis,
) -> None:
    notices = _notices(relayed, store, queue, "a", ok=True)
    assert await notices.leave() is False  # no group yet
    await notices.process_once()
    relay.frozen = True  # Redis, seen through the relay, stops answering
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await notices.leave(within_s=0.2) is False
    assert loop.time() - started < 5
    assert await _consumers(directory) == {"a": 0}  # left for a later prune


async def test_idle_consumers_without_pending_events_are_pruned_never_those_with(
    store: AccessStore, queue: MailQueue, directory: aioredis.Redis
) -> None:
    await _file(store, 1)
    dead_with = _notices(directory, store, queue, "dead-with", ok=False)
    assert await dead_with.process_once() == 0  # its event stays pending
    dead_empty = _notices(directory, store, queue, "dead-empty", ok=True)
    assert await dead_empty.process_once() == 0
    live = _notices(directory, store, queue, "live", ok=True)
    live.prune_idle_ms = 300
    await live.process_once()
    await _idle_at_least(directory, {"dead-with", "dead-empty"}, 300)
    assert await live.prune() == ["dead-empty"]
    assert await _consumers(directory) == {"dead-with": 1, "live": 0}
    assert await _pending(directory) == 1
    # A consumer seen recently is not pruned, even without pending events.
    fresh = _notices(directory, store, queue, "fresh", ok=True)
    await fresh.process_once()
    assert await live.prune() == []
    assert set(await _consumers(directory)) == {"dead-with", "live", "fresh"}


async def test_an_instance_prunes_when_it_starts_reading(
    store: AccessStore, queue: MailQueue, directory: aioredis.Redis
) -> None:
    for name in ("old-1", "old-2"):
        await _notices(directory, store, queue, name, ok=True).process_once()
    await _idle_at_least(directory, {"old-1", "old-2"}, 200)
    restarted = _notices(directory, store, queue, "new", ok=True)
    restarted.prune_idle_ms = 200
    await restarted.process_once()
    assert await _consumers(directory) == {"new": 0}


async def test_pruning_racing_reads_never_drops_a_pending_event(
    store: AccessStore, queue: MailQueue, directory: aioredis.Redis
) -> None:
    """Readers take events (which stay pending: their audit refuses) while another instance
    prunes with no idle limit: every event stays pending with an existing consumer."""
    events = 60
    for n in range(events):
        await _file(store, n)
    readers = [_notices(directory, store, queue, f"r{n}", ok=False) for n in range(3)]
    pruner = _notices(directory, store, queue, "pruner", ok=True)
    await pruner._ensure_group()
    done = asyncio.Event()
    pruned: list[str] = []

    async def read(reader: Notices) -> None:
        for _ in range(events):
            await reader.process_once(count=1)

    async def prune() -> None:
        while not done.is_set():
            pruned.extend(await pruner.prune(idle_ms=0))
            await asyncio.sleep(0)

    pruning = asyncio.create_task(prune())
    try:
        await asyncio.gather(*(read(r) for r in readers))
    finally:
        done.set()
        await pruning
    assert await _pending(directory) == events
    entries: Any = await directory.xpending_range(keys.access_outbox(), GROUP, "-", "+", 1000)
    holders = {e["consumer"].decode() for e in entries}
    consumers = await _consumers(directory)
    assert holders <= set(consumers)
    assert sum(consumers.values()) == events
    assert "pruner" not in pruned


async def test_the_access_service_stop_removes_its_notices_consumer(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock, tmp_path: Path
) -> None:
    await _file(store)
    app = service_app(directory, clock, tmp_path)
    running = access_ctx(app)
    await anext(running)
    consumer = app[ACCESS].notices.consumer
    async with asyncio.timeout(30):
        while True:
            if await directory.xlen(keys.access_outbox()) == 0:  # handled and deleted
                break
            await asyncio.sleep(0.02)
    assert consumer in await _consumers(directory)
    with pytest.raises(StopAsyncIteration):
        await anext(running)
    assert consumer not in await _consumers(directory)
