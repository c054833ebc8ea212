"""Entries deleted from the stream while pending, on the real Redis 6.2: acknowledged,
reported lost, never claimed again, never holding the trim back."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from audit.collector import GROUP, LOST_IDS_KEPT, Collector
from audit.keys import Keyring
from audit.verify import verify
from gateway.clock import ManualClock
from tests.audit.chains import read_frames
from tests.audit.conftest import STREAM, WriterFactory, stream_frames, write_session


def lost_collector(
    redis: aioredis.Redis, segment_dir: Path, **options: Any
) -> tuple[Collector, io.StringIO]:
    log = io.StringIO()
    settings: dict[str, Any] = {"claim_idle_ms": 0, "block_ms": 10, **options}
    collector = Collector(
        redis,
        stream=STREAM,
        segment_dir=segment_dir,
        consumer="c1",
        now=time.time,
        log=log,
        **settings,
    )
    return collector, log


async def pending(redis: aioredis.Redis) -> int:
    summary: Any = await redis.xpending(STREAM, GROUP)
    return int(summary["pending"])


async def entry_ids(redis: aioredis.Redis) -> list[bytes]:
    entries: Any = await redis.xrange(STREAM)
    return [entry_id for entry_id, _fields in entries]


async def test_redis_claims_a_deleted_entry_without_its_id(redis: aioredis.Redis) -> None:
    """The server behaviour the collector relies on (Redis 6.2)."""
    first = await redis.xadd(STREAM, {"f": b"1"})
    gone = await redis.xadd(STREAM, {"f": b"2"})
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead", {STREAM: ">"})
    await redis.xdel(STREAM, gone)
    reply: Any = await redis.xautoclaim(STREAM, GROUP, "me", 0, start_id="0-0")
    assert reply[1] == [(first, {b"f": b"1"}), (None, None)]  # the id is not in the reply
    assert await pending(redis) == 2  # ... and it stays pending, now owned by "me"
    history: Any = await redis.xreadgroup(GROUP, "me", {STREAM: "0-0"})
    assert [entry_id for entry_id, _ in history[0][1]] == [first, gone]
    assert not history[0][1][1][1]  # own history names it, without fields


async def test_a_claimed_entry_deleted_while_pending_is_acknowledged_and_reported_lost(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=2)
    await writer.close()
    frames = await stream_frames(redis)
    ids = await entry_ids(redis)
    seg = tmp_path / "seg"
    collector, log = lost_collector(redis, seg)
    await collector.ensure_group()
    await redis.xreadgroup(GROUP, "dead", {STREAM: ">"})  # a collector dies holding them all
    await redis.xdel(STREAM, ids[3])  # deleted while pending
    await collector.run_once()
    assert await pending(redis) == 0
    assert collector.lost == 1
    assert collector.lost_entries() == [ids[3].decode()]
    text = log.getvalue()
    assert f"audit collect: error: entry {ids[3].decode()} was deleted" in text
    assert "audit collect: error: gap: 1 frame(s) lost" in text
    assert collector.gaps() == [(writer.stream_id, 3, 3)]
    stored = {(f.stream, f.seq) for f in read_frames(seg)}
    assert stored == {(f.stream, f.seq) for f in frames} - {(writer.stream_id, 3)}
    assert await redis.xlen(STREAM) == 0  # the lost entry no longer pins the trim MINID
    assert "seq_gap" in verify([seg], keyring).codes()
    # Nothing is left to claim again: a later round finds nothing, reports nothing new.
    assert await collector.run_once() == 0
    assert collector.lost == 1
    assert text.count("was deleted") == log.getvalue().count("was deleted")


async def test_an_own_pending_entry_deleted_after_a_crash_is_lost_not_stored(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, tmp_path: Path
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=1)
    await writer.close()
    ids = await entry_ids(redis)
    collector, log = lost_collector(redis, tmp_path / "seg", claim_idle_ms=60_000)
    await collector.ensure_group()
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=2)  # c1 crashed before acking
    await redis.xdel(STREAM, ids[0])
    await collector.run_once()
    assert collector.lost == 1
    assert collector.lost_entries() == [ids[0].decode()]
    assert "holds no frame" not in log.getvalue()  # lost, not mistaken for a bad entry
    assert await pending(redis) == 0
    assert collector.gaps() == [(writer.stream_id, 0, 0)]  # the stream does not start at 0
    assert await redis.xlen(STREAM) == 0


async def test_many_deleted_entries_across_claim_pages_are_all_acknowledged(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=20)
    await writer.close()
    frames = await stream_frames(redis)
    ids = await entry_ids(redis)
    collector, _log = lost_collector(redis, tmp_path / "seg", batch=4)
    await collector.ensure_group()
    await redis.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=len(ids) // 2)
    deleted = ids[1 : len(ids) // 2 : 3]  # only entries pending with the dead collector
    await redis.xdel(STREAM, *deleted)
    await collector.run_once()
    assert collector.lost == len(deleted)
    assert sorted(collector.lost_entries()) == sorted(i.decode() for i in deleted)
    assert await pending(redis) == 0
    assert await redis.xlen(STREAM) == 0
    kept = [f for i, f in enumerate(frames) if ids[i] not in deleted]
    assert sorted((f.stream, f.seq) for f in read_frames(tmp_path / "seg")) == sorted(
        (f.stream, f.seq) for f in kept
    )
    missing = sorted(f.seq for i, f in enumerate(frames) if ids[i] in deleted)
    assert [start for _stream, start, _end in collector.gaps()] == missing
    report = verify([tmp_path / "seg"], keyring)
    assert {f.code for f in report.errors} == {"seq_gap"}


async def test_lost_ids_kept_for_the_report_are_bounded(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    total = LOST_IDS_KEPT + 20
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(total):
            pipe.xadd(STREAM, {"f": str(n)})
        await pipe.execute()
    ids = await entry_ids(redis)
    collector, _log = lost_collector(redis, tmp_path / "seg", batch=50)
    await collector.ensure_group()
    await redis.xreadgroup(GROUP, "dead", {STREAM: ">"})
    await redis.xdel(STREAM, *ids)
    await collector.run_once()
    assert collector.lost == total  # counted exactly
    assert collector.lost_entries() == [i.decode() for i in ids[-LOST_IDS_KEPT:]]
    assert await pending(redis) == 0


async def test_the_collect_command_reports_lost_frames(
    redis: aioredis.Redis,
    redis_url: str,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=1)
    await writer.close()
    ids = await entry_ids(redis)
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead", {STREAM: ">"})
    await redis.xdel(STREAM, ids[1])
    command = [sys.executable, "-m", "audit", "collect", "--redis-url", redis_url]
    command += ["--stream", STREAM, "--segment-dir", str(tmp_path / "seg"), "--once"]
    command += ["--claim-idle-ms", "0"]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"error: entry {ids[1].decode()} was deleted from the stream" in done.stderr
    assert f"gap: stream {writer.stream_id} lacks seq 1..1" in done.stderr
    assert "gap: 1 frame(s) lost: deleted from the stream before stored" in done.stderr
    assert await pending(redis) == 0
