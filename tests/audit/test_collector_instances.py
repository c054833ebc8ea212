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
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit.collector import LOCK_NAME, Collector
from audit.errors import SegmentError
from audit.keys import Keyring
from audit.segment import segment_paths
from audit.verify import verify
from gateway.clock import ManualClock
from tests.audit.conftest import STREAM, WriterFactory, collect, stream_frames, write_session
from tests.audit.test_collector import run_collector

WAIT_S = 30.0  # generous: a loaded machine


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


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
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, 2)
    seg = tmp_path / "seg"
    first = collector_on(redis, seg, "c1")
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop))
    try:
        deadline = time.monotonic() + WAIT_S
        while first.acked < len(await stream_frames(redis)):
            assert time.monotonic() < deadline, "the first collector stored nothing"
            await asyncio.sleep(0.02)
        # The first collector's next batch, caught half-written by the second one's start.
        [live] = segment_paths([seg])
        in_flight = struct.pack(">I", 200) + b"\x92" * 50
        append(live, in_flight)
        size = live.stat().st_size
        second = collector_on(redis, seg, "c2")
        with pytest.raises(SegmentError, match="another collector"):
            await second.run_once()
        assert live.stat().st_size == size  # nothing of the batch in flight was cut
    finally:
        stop.set()
        await asyncio.wait_for(running, WAIT_S)
    os.truncate(live, size - len(in_flight))  # the batch "fails": its writer undoes it
    # Once the first collector stopped, the directory is free again.
    await writer.close()
    assert await collect(redis, seg, "c2") > 0
    assert verify([seg], keyring).ok(strict=True)


async def test_the_collect_command_on_a_held_directory_says_so_and_exits_1(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    seg = tmp_path / "seg"
    first = collector_on(redis, seg, "c1")
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop))
    try:
        deadline = time.monotonic() + WAIT_S
        while not (seg / LOCK_NAME).exists():
            assert time.monotonic() < deadline, "the first collector never started"
            await asyncio.sleep(0.02)
        second = run_collector(redis_url, seg, "c2")
        _, err = await asyncio.to_thread(second.communicate, timeout=WAIT_S)
        assert second.returncode == 1
        assert b"in use by another collector" in err
        assert b"Traceback" not in err
    finally:
        stop.set()
        await asyncio.wait_for(running, WAIT_S)
