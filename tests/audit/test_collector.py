"""The collector on a real Redis and real files: durable, exactly once, claims, trims."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit.collector import GROUP, PAUSE_BEFORE_ACK_ENV, Collector, SeqRanges, trim_stream
from audit.frame import MAX_FRAME_BYTES, Frame, decode_frame
from audit.keys import Keyring
from audit.segment import SegmentWriter, read_segment
from audit.verify import verify
from gateway.clock import ManualClock
from tests.audit.chains import read_frames, write_segment
from tests.audit.conftest import (
    STREAM,
    SessionWriter,
    WriterFactory,
    collect,
    request_pair,
    stream_frames,
    write_session,
)


def run_collector(
    redis_url: str, segment_dir: Path, consumer: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "audit",
        "collect",
        "--redis-url",
        redis_url,
        "--stream",
        STREAM,
        "--segment-dir",
        str(segment_dir),
        "--consumer",
        consumer,
        "--once",
        *extra,
    ]
    return subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def pending(redis: aioredis.Redis) -> int:
    summary: Any = await redis.xpending(STREAM, GROUP)
    return int(summary["pending"])


def seq_counts(segment_dir: Path) -> Counter[tuple[str, int]]:
    return Counter((f.stream, f.seq) for f in read_frames(segment_dir))


def assert_stored_once(segment_dir: Path, written: list[Frame]) -> None:
    """Every written frame is in the segment files, none twice, nothing else."""
    counts = seq_counts(segment_dir)
    assert sorted(counts) == sorted((f.stream, f.seq) for f in written)
    assert set(counts.values()) == {1}


async def wait_for_pause(collector: subprocess.Popen[bytes], pause: Path) -> None:
    """Until the collector has written its segment and paused before acknowledging."""
    for _ in range(500):
        if await asyncio.to_thread(pause.exists) or collector.poll() is not None:
            break
        await asyncio.sleep(0.02)
    paused = await asyncio.to_thread(pause.exists)
    assert paused, collector.stderr.read() if collector.stderr else b""


def logging_collector(redis: aioredis.Redis, segment_dir: Path) -> tuple[Collector, io.StringIO]:
    log = io.StringIO()
    collector = Collector(
        redis, stream=STREAM, segment_dir=segment_dir, consumer="c1", now=time.time, log=log
    )
    return collector, log


async def test_collects_every_frame_once_and_trims_what_was_acknowledged(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    written = await write_closed_session(10, checkpoint_every_frames=5)
    assert await collect(redis, tmp_path / "seg") == len(written)
    assert_stored_once(tmp_path / "seg", written)
    assert await pending(redis) == 0
    assert await redis.xlen(STREAM) == 0  # acknowledged by the only group: trimmed
    assert verify([tmp_path / "seg"], keyring).ok(strict=True)
    assert await collect(redis, tmp_path / "seg") == 0  # nothing new, nothing twice


async def test_collector_killed_between_write_and_ack_loses_and_duplicates_nothing(
    redis: aioredis.Redis,
    redis_url: str,
    write_closed_session: SessionWriter,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    written = await write_closed_session(15, checkpoint_every_frames=7)
    pause = tmp_path / "paused"
    first = run_collector(redis_url, tmp_path / "seg", "c1", env={PAUSE_BEFORE_ACK_ENV: str(pause)})
    try:
        await wait_for_pause(first, pause)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for pipe in (first.stdout, first.stderr):
            if pipe:
                pipe.close()
    # On disk (fsynced) but never acknowledged: Redis still holds them as pending.
    assert len(read_frames(tmp_path / "seg")) == len(written)
    assert await pending(redis) == len(written)
    # Another collector claims the dead one's entries; nothing is written twice.
    second = run_collector(redis_url, tmp_path / "seg", "c2", "--claim-idle-ms", "0")
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert f"skipped {len(written)} already stored".encode() in err
    assert_stored_once(tmp_path / "seg", written)
    assert await pending(redis) == 0
    assert verify([tmp_path / "seg"], keyring).ok(strict=True)


async def test_restarted_collector_rereads_its_own_pending_entries(
    redis: aioredis.Redis, redis_url: str, write_closed_session: SessionWriter, tmp_path: Path
) -> None:
    written = await write_closed_session(3)
    pause = tmp_path / "paused"
    first = run_collector(redis_url, tmp_path / "seg", "c1", env={PAUSE_BEFORE_ACK_ENV: str(pause)})
    try:
        await wait_for_pause(first, pause)
    finally:
        first.kill()
        first.communicate()
    assert await pending(redis) == len(written)
    again = run_collector(redis_url, tmp_path / "seg", "c1")  # same name, default claim idle
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert_stored_once(tmp_path / "seg", written)
    assert await pending(redis) == 0


async def test_partial_record_left_by_a_crash_is_cut_and_redelivered(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    frames = await write_closed_session(2)
    seg = tmp_path / "seg"
    collector = Collector(
        redis, stream=STREAM, segment_dir=seg, consumer="c1", now=time.time, trim=False
    )
    await collector.ensure_group()
    reply: Any = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=3)
    assert len(reply[0][1]) == 3  # delivered, never acknowledged: the crash
    (only,) = list(seg.glob("*.seg")) if seg.exists() else [None]
    assert only is None
    # A crashed earlier run left a segment whose last record is cut short.
    path = write_segment(tmp_path / "seg-early.seg", frames[:2])
    seg.mkdir()
    broken = seg / "20260101T000000-c1-000001.seg"
    broken.write_bytes(path.read_bytes()[:-5])
    await collector.run_once()
    assert_stored_once(seg, frames)
    assert verify([seg], keyring).ok(strict=True)


async def test_trim_never_drops_what_another_group_has_not_acknowledged(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, tmp_path: Path
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=3)
    total = await redis.xlen(STREAM)
    await redis.xgroup_create(STREAM, "archive", id="0")
    await redis.xreadgroup("archive", "a1", {STREAM: ">"}, count=2)  # pending, unacked
    await collect(redis, tmp_path / "seg")
    assert await redis.xlen(STREAM) == total  # the archive group still needs all of them
    entries: Any = await redis.xrange(STREAM, count=1)
    await redis.xack(STREAM, "archive", entries[0][0])
    await trim_stream(redis, STREAM)
    assert await redis.xlen(STREAM) == total - 1  # only what both groups have acknowledged


async def test_gaps_are_reported(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, tmp_path: Path
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=3)
    entries: Any = await redis.xrange(STREAM)
    await redis.xdel(STREAM, entries[3][0], entries[4][0])
    collector, out = logging_collector(redis, tmp_path / "seg")
    await collector.run_once()
    assert collector.gaps() == [(writer.stream_id, 3, 4)]
    assert f"gap: stream {writer.stream_id} lacks seq 3..4" in out.getvalue()


@pytest.mark.parametrize(
    ("seqs", "holes"),
    [
        ([], []),
        ([0, 1, 2], []),
        ([2, 0, 1], []),
        ([1, 5, 3, 4], [(0, 0), (2, 2)]),
        ([0, 9, 8, 2], [(1, 1), (3, 7)]),
    ],
)
def test_seq_ranges(seqs: list[int], holes: list[tuple[int, int]]) -> None:
    ranges = SeqRanges()
    for seq in seqs:
        ranges.add(seq)
        ranges.add(seq)
    assert ranges.holes() == holes
    assert all(seq in ranges for seq in seqs)
    assert -1 not in ranges
    assert 100 not in ranges


async def test_non_frame_entries_are_acknowledged_and_reported(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    await redis.xadd(STREAM, {"x": "1"})
    await redis.xadd(STREAM, {"f": b"\xc1not a frame"})
    collector, out = logging_collector(redis, tmp_path / "seg")
    written = await collector.run_once()
    assert written == 1  # the undecodable frame is kept for verify to report
    assert await pending(redis) == 0
    text = out.getvalue()
    assert "holds no frame" in text
    assert "stored for verify to report" in text


async def test_segments_rotate_by_size_and_age_and_verify_across_files(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    total = len(await write_closed_session(8, checkpoint_every_frames=6))
    assert await redis.xlen(STREAM) == total
    ticks = iter(range(1_000_000))
    collector = Collector(
        redis,
        stream=STREAM,
        segment_dir=tmp_path / "seg",
        consumer="c1",
        now=lambda: float(next(ticks)),
        batch=5,
        max_segment_bytes=4096,
        max_segment_age_s=1e9,
    )
    assert await collector.run_once() == total
    files = sorted((tmp_path / "seg").glob("*.seg"))
    assert len(files) > 2
    report = verify(files, keyring)
    assert report.findings == []
    assert report.frames == total


def test_segment_writer_rotates_by_age(tmp_path: Path) -> None:
    clock = ManualClock()
    with SegmentWriter(tmp_path, "c1", now=clock.now, max_age_s=60) as out:
        out.write([b"a"])
        clock.advance(30)
        out.write([b"b"])
        clock.advance(31)
        out.write([b"c"])
    files = sorted(tmp_path.glob("*.seg"))
    assert [[i.data for i in read_segment(f)] for f in files] == [[b"a", b"b"], [b"c"]]


async def test_replay_follow_prints_the_live_stream(
    redis: aioredis.Redis, redis_url: str, make_writer: WriterFactory, clock: ManualClock
) -> None:
    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "audit",
        "replay",
        "--follow",
        "--from-start",
        "--redis-url",
        redis_url,
        "--stream",
        STREAM,
        "--grant",
        "g1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        writer = await make_writer()
        await write_session(writer, clock, requests=3)
        assert follower.stdout is not None
        lines = [
            (await asyncio.wait_for(follower.stdout.readline(), 30)).decode() for _ in range(5)
        ]
        assert "workflow grant.approved" in lines[0]
        assert "GET /invoices/0?page=2  200" in lines[1]
        assert "POST /invoices/1?page=2  200" in lines[2]
        assert "workflow grant.revoked" in lines[4]
    finally:
        follower.send_signal(signal.SIGINT)
        await asyncio.wait_for(follower.communicate(), 30)
    assert follower.returncode == 0


async def test_concurrent_writers_and_collectors_keep_every_chain_whole(
    redis: aioredis.Redis,
    redis_url: str,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    second_client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    one = await make_writer(checkpoint_every_frames=7)
    two = await make_writer(client=second_client, checkpoint_every_frames=5)
    bodies = [request_pair(n, clock.now())[0] for n in range(300)]
    collectors = [
        Collector(
            redis,
            stream=STREAM,
            segment_dir=tmp_path / name,
            consumer=name,
            now=time.time,
            batch=16,
            block_ms=10,
        )
        for name in ("c1", "c2")
    ]
    await asyncio.gather(
        *(one.append(b) for b in bodies[:150]),
        *(two.append(b) for b in bodies[150:]),
        one.checkpoint(),
        *(c.run_once() for c in collectors),
    )
    await one.close()
    await two.close()
    await second_client.aclose()
    await asyncio.gather(*(c.run_once() for c in collectors))
    counts = seq_counts(tmp_path / "c1") + seq_counts(tmp_path / "c2")
    assert set(counts.values()) == {1}
    assert {s for s, _ in counts} == {one.stream_id, two.stream_id}
    assert len(counts) == one.seq + two.seq
    report = verify([tmp_path / "c1", tmp_path / "c2"], keyring)
    assert report.errors == []
    assert await pending(redis) == 0


async def test_a_failed_segment_write_acknowledges_nothing_and_the_retry_stores_it(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    written = await write_closed_session(3)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the segment directory's parent should be")
    seg = blocker / "seg"
    collector = Collector(
        redis, stream=STREAM, segment_dir=seg, consumer="c1", now=time.time, trim=False
    )
    with pytest.raises(NotADirectoryError):
        await collector.run_once()
    assert collector.acked == 0
    assert await pending(redis) == len(written)  # delivered, nothing acknowledged
    blocker.unlink()
    # The same collector retries: the frames it failed to store are written, not skipped.
    await collector.run_once()
    assert_stored_once(seg, written)
    assert await pending(redis) == 0
    assert verify([seg], keyring).ok(strict=True)


@pytest.mark.parametrize("hostile", [b"", b"\x00" * (MAX_FRAME_BYTES + 1)])
async def test_an_entry_a_segment_cannot_hold_never_hides_the_frames_after_it(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
    hostile: bytes,
) -> None:
    writer = await make_writer()
    await writer.append({"record": "event", "n": 1})
    await redis.xadd(STREAM, {"f": hostile})  # between two frames of one stream
    await write_session(writer, clock, 2)
    await writer.close()
    entries: Any = await redis.xrange(STREAM)
    written = [decode_frame(f[b"f"]) for _id, f in entries if f[b"f"] != hostile]
    seg = tmp_path / "seg"
    collector, out = logging_collector(redis, seg)
    assert await collector.run_once() == len(written)
    assert "holds no frame" in out.getvalue()
    assert await pending(redis) == 0
    # A restarted collector cuts only partial tails: the acknowledged frames stay.
    assert await collect(redis, seg) == 0
    assert_stored_once(seg, written)
    assert verify([seg], keyring).ok(strict=True)


async def test_entries_claimed_from_a_dead_collector_keep_verify_clean(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, 2)
    seg = tmp_path / "seg"
    collector = Collector(
        redis,
        stream=STREAM,
        segment_dir=seg,
        consumer="c1",
        now=time.time,
        claim_idle_ms=300,
        block_ms=50,
        trim=False,
    )
    await collector.ensure_group()
    await redis.xreadgroup(GROUP, "c2", {STREAM: ">"}, count=3)  # c2 dies holding seq 0..2
    await write_session(writer, clock, 2)
    await writer.close()
    written = await stream_frames(redis)
    stop = asyncio.Event()
    running = asyncio.create_task(collector.run(stop))
    for _ in range(200):  # until c2's entries were claimed, stored and acknowledged
        await asyncio.sleep(0.02)
        if collector.acked == len(written):
            break
    stop.set()
    await running
    assert await pending(redis) == 0
    assert_stored_once(seg, written)
    report = verify([seg], keyring)
    assert report.errors == []  # seq 0..2 came late, yet nothing is out of order in a file
