"""A segment write or fsync that fails for real (file size limit, a descriptor that no longer
writes, a descriptor that cannot fsync): no partial record is ever followed by another,
nothing of the failed batch is acknowledged, nothing acknowledged before it is lost."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit.collector import GROUP, Collector
from audit.errors import SegmentError
from audit.frame import GENESIS_PREV, Frame, encode_body
from audit.keys import Keyring
from audit.segment import MAGIC, SegmentWriter, read_segment, repair_tail
from audit.verify import verify
from audit.writer import FRAME_FIELD
from gateway.clock import ManualClock
from tests.audit.chains import read_frames
from tests.audit.conftest import STREAM, SessionWriter, WriterFactory, collect, write_session

RECORD_HEAD = 4  # the u32 length before each record

# Runs `audit.cli` (argv[2:]) with the file size limit argv[1]: a write crossing it is cut
# short, the next one fails with EFBIG (Python ignores SIGXFSZ).
LIMITED_CLI = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from audit.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Three writes through one SegmentWriter under the file size limit argv[2], in argv[1].
LIMITED_WRITER = """
import json, resource, sys
from pathlib import Path
from audit.segment import SegmentWriter
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
out = SegmentWriter(Path(sys.argv[1]), "c1", now=lambda: 0.0)
out.write([b"a" * 100]); out.sync()
try:
    out.write([b"b" * 50, b"c" * 1000]); out.sync()
    failure = None
except OSError as exc:
    failure = exc.errno
out.write([b"d" * 10]); out.sync()
print(json.dumps({"errno": failure, "cut_backs": out.cut_backs, "abandoned": len(out.abandoned)}))
out.close()
"""


def records(path: Path) -> list[bytes | None]:
    items = list(read_segment(path))
    assert [i.error for i in items if i.error] == []  # no partial or garbled record
    return [i.data for i in items]


def descriptor_of(path: Path) -> int:
    """The descriptor this process holds open on `path` (the writer's own)."""
    for name in os.listdir("/proc/self/fd"):
        with_fd = Path("/proc/self/fd") / name
        try:
            if os.readlink(with_fd) == str(path):
                return int(name)
        except OSError:
            continue
    raise LookupError(f"no descriptor open on {path}")


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        os.close(fd)


def break_read_only(fd: int, path: Path, _pipe: tuple[int, int]) -> None:
    """The descriptor now reads the file: writes and ftruncate fail (EBADF, EINVAL)."""
    read_only = os.open(path, os.O_RDONLY)
    os.dup2(read_only, fd)
    os.close(read_only)


def break_fsync(fd: int, _path: Path, pipe: tuple[int, int]) -> None:
    """The descriptor is now a pipe: writes 'succeed', fsync and ftruncate fail (EINVAL)."""
    os.dup2(pipe[1], fd)


def test_a_write_cut_short_is_cut_back_and_the_writer_goes_on_in_the_same_file(
    tmp_path: Path,
) -> None:
    # Room for the magic, the first record, the second, and half of the third.
    limit = len(MAGIC) + (RECORD_HEAD + 100) + (RECORD_HEAD + 50) + 500
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITER, str(tmp_path), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"errno": errno.EFBIG, "cut_backs": 1, "abandoned": 0}
    (only,) = sorted(tmp_path.glob("*.seg"))
    # The failed batch ("b" and the cut "c") is gone; "d" follows the last good record.
    assert records(only) == [b"a" * 100, b"d" * 10]


@pytest.mark.parametrize(
    ("sabotage", "failing_step"), [(break_read_only, "write"), (break_fsync, "sync")]
)
def test_a_file_that_cannot_be_cut_back_is_abandoned_for_a_new_one(
    tmp_path: Path, pipe: tuple[int, int], sabotage: Any, failing_step: str
) -> None:
    clock = ManualClock()
    out = SegmentWriter(tmp_path, "c1", now=clock.now)
    out.write([b"a", b"b"])
    out.sync()
    first = out.current
    assert first is not None
    sabotage(descriptor_of(first), first, pipe)
    if failing_step == "write":
        with pytest.raises(OSError, match=r"Errno 9\]"):  # EBADF
            out.write([b"c"])
    else:
        out.write([b"c"])  # into the pipe: the write "succeeds", the fsync cannot
        with pytest.raises(OSError, match=r"Errno 22\]"):  # EINVAL
            out.sync()
    assert list(out.abandoned) == [first]
    assert out.current is None
    out.write([b"d"])
    out.sync()
    out.close()
    files = sorted(tmp_path.glob("*.seg"))
    assert [records(f) for f in files] == [[b"a", b"b"], [b"d"]]


def test_frames_left_in_an_abandoned_file_unsynced_are_cut_off_when_possible(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    out = SegmentWriter(tmp_path, "c1", now=lambda: 0.0)
    out.write([b"a"])
    out.sync()
    first = out.current
    assert first is not None
    durable = first.stat().st_size
    out.write([b"b"])  # in the file, not yet durable
    break_fsync(descriptor_of(first), first, pipe)
    with pytest.raises(OSError, match=r"Errno 22\]"):  # EINVAL: neither fsync nor ftruncate
        out.sync()
    assert out.abandoned == {first: durable}
    assert records(first) == [b"a", b"b"]  # "b" never became durable: it may not count
    assert out.retry_abandoned() == {}  # through a new descriptor the cut works
    assert records(first) == [b"a"]
    assert out.abandoned == {}
    out.close()


def test_a_record_too_big_writes_nothing_of_its_batch(tmp_path: Path) -> None:
    with SegmentWriter(tmp_path, "c1", now=lambda: 0.0) as out:
        out.write([b"a"])
        with pytest.raises(Exception, match="does not fit a segment"):
            out.write([b"b", b""])
        out.write([b"c"])
    (only,) = tmp_path.glob("*.seg")
    assert records(only) == [b"a", b"c"]


@pytest.mark.parametrize("head", [b"", MAGIC[:5]])
def test_a_file_cut_inside_its_magic_reads_as_an_empty_segment(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "20260101T000000-c1-000001.seg"
    path.write_bytes(head)
    assert repair_tail(path) == 0
    assert path.read_bytes() == MAGIC
    assert records(path) == []


def test_a_file_with_a_foreign_head_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "20260101T000000-c1-000001.seg"
    path.write_bytes(b"GIF8")
    with pytest.raises(Exception, match="bad magic"):
        repair_tail(path)
    assert path.read_bytes() == b"GIF8"


async def pending(redis: aioredis.Redis) -> int:
    summary: Any = await redis.xpending(STREAM, GROUP)
    return int(summary["pending"])


async def test_collector_under_a_file_size_limit_loses_and_acknowledges_nothing_wrongly(
    redis: aioredis.Redis,
    redis_url: str,
    write_closed_session: SessionWriter,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    written = await write_closed_session(4)
    entries: Any = await redis.xrange(STREAM)
    sizes = [len(fields[FRAME_FIELD]) for _id, fields in entries]
    # Two batches of three fit; the third batch's first record is cut in the middle.
    good = len(MAGIC) + sum(RECORD_HEAD + n for n in sizes[:6])
    limit = good + RECORD_HEAD + sizes[6] // 2
    seg = tmp_path / "seg"
    failed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            LIMITED_CLI,
            str(limit),
            "collect",
            "--redis-url",
            redis_url,
            "--stream",
            STREAM,
            "--segment-dir",
            str(seg),
            "--consumer",
            "c1",
            "--batch",
            "3",
            "--once",
            "--no-trim",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1, failed.stderr
    assert "File too large" in failed.stderr
    (only,) = sorted(seg.glob("*.seg"))
    assert only.stat().st_size == good  # cut back: no partial record left
    assert len(records(only)) == 6
    assert await pending(redis) == 3  # the failed batch: delivered, not acknowledged
    # The rest is collected later; the six acknowledged frames are all still there.
    assert await collect(redis, seg) == len(written) - 6
    counts = sorted((f.stream, f.seq) for f in read_frames(seg))
    assert counts == sorted((f.stream, f.seq) for f in written)
    assert await pending(redis) == 0
    assert verify([seg], keyring).ok(strict=True)


@pytest.mark.parametrize("sabotage", [break_read_only, break_fsync])
async def test_a_running_collector_whose_segment_fails_acknowledges_nothing_of_the_batch(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
    pipe: tuple[int, int],
    sabotage: Any,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=2)
    first_batch = await redis.xlen(STREAM)
    seg = tmp_path / "seg"
    collector = Collector(
        redis,
        stream=STREAM,
        segment_dir=seg,
        consumer="c1",
        now=time.time,
        block_ms=20,
        trim=False,
    )
    running = asyncio.create_task(collector.run(asyncio.Event()))
    for _ in range(1500):  # at least 30 s: a loaded machine may be slow to get there
        await asyncio.sleep(0.02)
        if collector.acked == first_batch:
            break
    assert collector.acked == first_batch
    (segment,) = sorted(seg.glob("*.seg"))
    sabotage(descriptor_of(segment), segment, pipe)
    await write_session(writer, clock, requests=2)
    with pytest.raises(OSError, match=r"Errno (9|22)\]"):  # EBADF, EINVAL
        await asyncio.wait_for(running, 30)
    assert collector.acked == first_batch  # nothing of the failed batch
    assert await pending(redis) >= 1  # the failed batch: delivered, not acknowledged
    assert len(records(segment)) == first_batch  # what was acknowledged is intact
    await writer.close()
    # Restarted (here: the same collector again), it stores what it failed to.
    await collector.run_once()
    assert await pending(redis) == 0
    every = sorted((f.stream, f.seq) for f in read_frames(seg))
    assert every == [(writer.stream_id, n) for n in range(writer.seq)]
    assert verify([seg], keyring).ok(strict=True)


async def test_a_lost_entry_of_a_failed_batch_is_counted_once_when_acknowledged(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    pipe: tuple[int, int],
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=1)
    await writer.close()
    seg = tmp_path / "seg"
    collector = Collector(
        redis, stream=STREAM, segment_dir=seg, consumer="c1", now=time.time, trim=False
    )
    await collector.ensure_group()
    delivered: Any = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"})
    entries = delivered[0][1]
    await collector._store(entries[:1])  # the segment is open
    gone = entries[1][0]
    await redis.xdel(STREAM, gone)
    (segment,) = sorted(seg.glob("*.seg"))
    break_read_only(descriptor_of(segment), segment, pipe)
    history: Any = await redis.xreadgroup(GROUP, "c1", {STREAM: "0"})
    with pytest.raises(OSError, match=r"Errno 9\]"):  # EBADF
        await collector._store(history[0][1])
    assert collector.lost == 0  # nothing of the failed batch is acknowledged, nor counted
    history = await redis.xreadgroup(GROUP, "c1", {STREAM: "0"})
    await collector._store(history[0][1])
    assert collector.lost == 1
    assert collector.lost_entries() == [gone.decode()]
    assert await pending(redis) == 0


def only_segment(seg: Path) -> tuple[Path, int]:
    """The one segment file in `seg`, and its size."""
    (segment,) = sorted(seg.glob("*.seg"))
    return segment, segment.stat().st_size


async def abandon_after_two(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    seg: Path,
    pipe: tuple[int, int],
) -> tuple[Collector, Any, Path, int]:
    """A collector that stored a session's first two entries (durable and acknowledged; the
    segment stays open), then abandoned that segment when the fsync of the rest failed.

    Returns the collector, the delivered entries, the segment and its durable size.
    """
    writer = await make_writer()
    await write_session(writer, clock, requests=1)
    await writer.close()
    collector = Collector(
        redis, stream=STREAM, segment_dir=seg, consumer="c1", now=time.time, trim=False
    )
    await collector.ensure_group()
    delivered: Any = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"})
    entries = delivered[0][1]
    await collector._store(entries[:2])
    segment, durable = only_segment(seg)
    break_fsync(descriptor_of(segment), segment, pipe)
    with pytest.raises(OSError, match=r"Errno 22\]"):  # EINVAL: neither fsync nor ftruncate
        await collector._store(entries[2:])
    return collector, entries, segment, durable


async def test_a_new_collector_rewrites_frames_left_unsynced_in_an_abandoned_file(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
    pipe: tuple[int, int],
) -> None:
    seg = tmp_path / "seg"
    _, entries, segment, durable = await abandon_after_two(redis, make_writer, clock, seg, pipe)
    marks: Any = await redis.hgetall(f"{STREAM}:abandoned-segments")
    assert marks == {segment.name.encode(): str(durable).encode()}
    # What a write that reached the page cache before its fsync failed leaves behind: the
    # batch's records in the abandoned file, never made durable (a crash may drop them).
    unsynced = b"".join(
        len(f[FRAME_FIELD]).to_bytes(RECORD_HEAD, "big") + f[FRAME_FIELD] for _, f in entries[2:]
    )
    segment.write_bytes(segment.read_bytes() + unsynced)
    assert len(records(segment)) == len(entries)
    # The first process is gone. A new one cannot tell those records from durable ones by
    # looking at the file: it must store them again rather than trust them.
    second = Collector(
        redis, stream=STREAM, segment_dir=seg, consumer="c1", now=time.time, trim=False
    )
    await second.run_once()
    assert await pending(redis) == 0
    assert second.skipped == 0
    assert second.written == len(entries) - 2
    rewritten = [f for f in sorted(seg.glob("*.seg")) if f != segment]
    assert sum(len(records(f)) for f in rewritten) == len(entries) - 2
    assert segment.stat().st_size >= durable  # never cut on the word of Redis alone
    report = verify([seg], keyring)
    assert report.ok(strict=True), [str(f) for f in report.findings]


async def test_the_collector_that_abandoned_a_file_cuts_it_back_and_drops_its_mark(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
    pipe: tuple[int, int],
) -> None:
    seg = tmp_path / "seg"
    collector, _, segment, _ = await abandon_after_two(redis, make_writer, clock, seg, pipe)
    assert await redis.hlen(f"{STREAM}:abandoned-segments") == 1
    await collector.run_once()  # the same process: the cut works now, the mark goes
    assert await redis.hlen(f"{STREAM}:abandoned-segments") == 0
    assert len(records(segment)) == 2
    assert await pending(redis) == 0
    assert verify([seg], keyring).ok(strict=True)


@pytest.mark.parametrize("bad_length", [0, 0xFFFFFFFF])
def test_damage_inside_a_segment_is_never_cut_away(tmp_path: Path, bad_length: int) -> None:
    # Only a crash's partial record at the very end may be cut; a garbled length in the
    # middle (bit rot, an edit) must stay for verify to report, with what follows it.
    with SegmentWriter(tmp_path, "c1", now=lambda: 0.0) as out:
        out.write([b"a" * 10, b"b" * 10, b"c" * 10])
    (path,) = tmp_path.glob("*.seg")
    data = bytearray(path.read_bytes())
    second = len(MAGIC) + RECORD_HEAD + 10
    data[second : second + RECORD_HEAD] = bad_length.to_bytes(RECORD_HEAD, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(SegmentError, match="damaged"):
        repair_tail(path)
    assert path.read_bytes() == bytes(data)


def test_a_zero_filled_tail_left_by_a_crash_is_cut(tmp_path: Path) -> None:
    with SegmentWriter(tmp_path, "c1", now=lambda: 0.0) as out:
        out.write([b"a" * 10])
    (path,) = tmp_path.glob("*.seg")
    good = path.read_bytes()
    path.write_bytes(good + bytes(4096))  # a file system that grew the file, not its data
    assert repair_tail(path) == 4096
    assert path.read_bytes() == good


async def test_a_collector_starts_beside_a_damaged_segment_and_leaves_it(
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    clock: ManualClock,
    tmp_path: Path,
    keyring: Keyring,
) -> None:
    writer = await make_writer()
    await write_session(writer, clock, requests=1)
    seg = tmp_path / "seg"
    await collect(redis, seg)
    (path,) = seg.glob("*.seg")
    data = bytearray(path.read_bytes())
    data[len(MAGIC) : len(MAGIC) + RECORD_HEAD] = (0).to_bytes(RECORD_HEAD, "big")
    path.write_bytes(bytes(data))
    await write_session(writer, clock, requests=1)
    await writer.close()
    log = io.StringIO()
    collector = Collector(
        redis, stream=STREAM, segment_dir=seg, consumer="c1", now=time.time, log=log
    )
    assert await collector.run_once() > 0  # the new frames are still collected
    assert path.read_bytes() == bytes(data)  # the evidence is left for verify
    assert "damaged" in log.getvalue()
    assert "decode_error" in verify([seg], keyring).codes()


def _three_frames(directory: Path) -> Path:
    first = Frame.seal("s-1", 0, GENESIS_PREV, encode_body({"record": "gateway", "n": 0}))
    frames = [first]
    for n in (1, 2):
        body = encode_body({"record": "gateway", "n": n})
        frames.append(Frame.seal("s-1", n, frames[-1].h, body))
    with SegmentWriter(directory, "c1", now=lambda: 0.0) as out:
        out.write([frame.encode() for frame in frames])
    (path,) = directory.glob("*.seg")
    return path


def test_a_length_grown_past_the_end_inside_a_segment_is_never_cut_away(tmp_path: Path) -> None:
    # A damaged length that claims more than the rest of the file reads like a crash's
    # partial record at the end; the whole frames after it say it is not one.
    path = _three_frames(tmp_path)
    data = bytearray(path.read_bytes())
    second = next(item for item in read_segment(path) if item.index == 1).offset
    rest = len(data) - second - RECORD_HEAD
    data[second : second + RECORD_HEAD] = (rest + 100).to_bytes(RECORD_HEAD, "big")
    path.write_bytes(bytes(data))
    assert [item.error for item in read_segment(path)][
        -1
    ] == f"partial record at end ({rest}/{rest + 100})"
    with pytest.raises(SegmentError, match="damaged"):
        repair_tail(path)
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize("kept", [1, 7, 30])
def test_a_frame_torn_by_a_crash_is_still_cut(tmp_path: Path, kept: int) -> None:
    path = _three_frames(tmp_path)
    data = path.read_bytes()
    last = [item for item in read_segment(path)][-1]
    path.write_bytes(data[: last.offset + RECORD_HEAD + kept])
    assert repair_tail(path) == RECORD_HEAD + kept
    assert path.read_bytes() == data[: last.offset]
