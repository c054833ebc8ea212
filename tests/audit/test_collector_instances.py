"""Collectors beside each other: one segment directory is one collector's.

A collector starting on a directory cuts partial records from the ends of its files (what a
crash leaves). Were another collector still writing there, its batch in flight would look
like exactly that and be cut after it was written and before it was acknowledged. So a
collector holds its directory for as long as it runs, and a second one is refused.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit.collector import LOCK_NAME, Collector
from audit.errors import SegmentError
from audit.keys import Keyring
from audit.segment import segment_paths
from audit.verify import verify
from audit.writer import AuditWriter
from gateway.clock import ManualClock
from tests.audit.conftest import STREAM, WriterFactory, collect, stream_frames, write_session
from tests.audit.test_collector import run_collector

WAIT_S = 30.0  # generous: a loaded machine


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


@asynccontextmanager
async def running(collector: Collector) -> AsyncIterator[Collector]:
    """Run `collector` in the background until the block is left, then wait for its end."""
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def until(condition: Callable[[], Awaitable[bool]], failure: str) -> None:
    """Wait for `condition`, at most WAIT_S; `failure` says what did not happen."""
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.02)


@pytest.fixture
async def written(make_writer: WriterFactory, clock: ManualClock) -> AuditWriter:
    """A writer, still open, that has written a session of two requests."""
    writer = await make_writer()
    await write_session(writer, clock, 2)
    return writer


def collector_on(redis: aioredis.Redis, segment_dir: Path, consumer: str) -> Collector:
    return Collector(
        redis,
        stream=STREAM,
        segment_dir=segment_dir,
        consumer=consumer,
        now=time.time,
        block_ms=20,
        trim=False,
    )


async def test_a_second_collector_on_a_live_directory_is_refused_and_cuts_nothing(
    redis: aioredis.Redis, written: AuditWriter, tmp_path: Path, keyring: Keyring
) -> None:
    seg = tmp_path / "seg"
    async with running(collector_on(redis, seg, "c1")) as first:

        async def stored_all() -> bool:
            return first.acked >= len(await stream_frames(redis))

        await until(stored_all, "the first collector stored nothing")
        # The first collector's next batch, caught half-written by the second one's start.
        [live] = segment_paths([seg])
        in_flight = struct.pack(">I", 200) + b"\x92" * 50
        append(live, in_flight)
        size = live.stat().st_size
        second = collector_on(redis, seg, "c2")
        with pytest.raises(SegmentError, match="another collector"):
            await second.run_once()
        assert live.stat().st_size == size  # nothing of the batch in flight was cut
    os.truncate(live, size - len(in_flight))  # the batch "fails": its writer undoes it
    # Once the first collector stopped, the directory is free again.
    await written.close()
    assert await collect(redis, seg, "c2") > 0
    assert verify([seg], keyring).ok(strict=True)


async def test_the_collect_command_on_a_held_directory_says_so_and_exits_1(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    seg = tmp_path / "seg"
    async with running(collector_on(redis, seg, "c1")):

        async def started() -> bool:
            return (seg / LOCK_NAME).exists()

        await until(started, "the first collector never started")
        second = run_collector(redis_url, seg, "c2")
        _, err = await asyncio.to_thread(second.communicate, timeout=WAIT_S)
        assert second.returncode == 1
        assert b"in use by another collector" in err
        assert b"Traceback" not in err
