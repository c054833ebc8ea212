"""The collector: moves frames from the Redis stream into segment files, durably, once.

    collector = Collector(redis, stream=key, segment_dir=Path("var/audit"), consumer="c1",
                          now=time.time)
    await collector.run(stop)          # or: await collector.run_once()

Each round: read a batch with XREADGROUP (group `collectors`), append the frames not
yet on disk to the current segment, fsync, and only then XACK. A crash anywhere before
the XACK leaves the entries pending: a restarted collector re-reads its own pending
entries first, and any collector claims entries left pending by a dead one with
XAUTOCLAIM (Redis 6.2: the reply is `[next_id, entries]`); claimed entries start a new
segment file, so that within a file each stream's frames stay in seq order (verify
checks that order; claimed frames are older than those already written). An entry
without frame bytes a segment can hold (missing, empty, oversized) is acknowledged and
reported, never stored. Writing is idempotent on
(stream, seq) and bytes: the collector knows every (stream, seq) in its segment directory
(read at start, kept as ranges) and the SHA-256 of the newest frames' bytes (the last
DIGESTS_KEPT seqs, at most DIGESTS_PER_SEQ differing copies each), so redelivered frames
are acknowledged without being written twice.

Forks: a frame whose (stream, seq) is already stored but whose bytes differ (a copy
injected into Redis, or the genuine frame arriving after a forged one) is stored too,
never dropped, counted (`forks`) and logged at error; verify reports the pair as
`seq_fork`, naming both copies and the one the chain goes on from. A frame whose
(stream, seq) is stored but whose digest is no longer remembered is stored again: an
identical copy is harmless to verify, a dropped differing one would be lost.

A failed write or fsync acknowledges nothing of its batch (the segment writer undoes it)
and ends the round with the error; a restarted collector re-reads those entries as its
own pending ones.

Lost frames: an entry deleted from the stream (XDEL, or a trim by someone else) while
it was pending keeps its place in the group's pending list without its fields. Redis
6.2's XAUTOCLAIM claims it but answers nil in its place, without its id; own pending
history (XREADGROUP from 0) lists it as an id without fields. Left there it would be
claimed again every round and hold the trimming MINID back for ever, so the collector
acknowledges it, logs it at error and counts it (`lost`, `lost_entries()`); its frame
is gone, and the hole shows in `gaps()` (and in verify) once later frames of its stream
are stored.

A segment file abandoned after a failed write or fsync (see `audit.segment`) may hold
frames of the failed batch past its durable size. Its name and durable size go into the
Redis hash `<stream>:abandoned-segments` before the collector stops with the error, so
that any later collector on that directory counts nothing past that size as stored and
writes those frames again (an identical duplicate is harmless to verify). The process
that abandoned a file cuts it back once it can, and then removes its mark; a later
process never cuts a file on the word of Redis.

Gaps (a stream whose seqs this directory holds with holes, or that does not start at
0) are reported through `gaps()` and logged, with the lost frames, at each round where
they change.

One collector per segment directory: a collector holds an exclusive lock on its directory
(`collector.lock` in it) from start to stop, and another collector started on it is
refused (SegmentError). A collector's start cuts partial records from the ends of the
files (what a crash leaves); in a directory another collector still writes, that
collector's batch in flight would look just like one and be cut between its write and its
acknowledgement.
Collectors beside each other each get a directory of their own (one consumer group shares
the frames out between them); verify reads them together.

Trimming: XTRIM MINID with the smallest id any consumer group still needs (its oldest
pending entry, or the entry after its last delivered one), so that no frame any group
has not acknowledged is ever dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import hashlib
import os
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from audit.errors import FrameError, SegmentError
from audit.frame import MAX_FRAME_BYTES, decode_frame
from audit.segment import MAGIC, SegmentWriter, read_segment, repair_tail, segment_paths
from audit.writer import FRAME_FIELD

GROUP = "collectors"
LOCK_NAME = "collector.lock"  # in the segment directory: held while a collector runs
# Fault injection for the crash test: when set, the collector creates this file after
# the first batch is durable and then hangs before acknowledging it.
PAUSE_BEFORE_ACK_ENV = "GATEWAY_AUDIT_COLLECTOR_PAUSE_BEFORE_ACK"
# The ids of this many most recent lost entries are kept for the report (the count is exact).
LOST_IDS_KEPT = 100
# The digests of this many most recently stored (stream, seq) are kept to tell a redelivered
# frame from a fork (about 10 MB); redeliveries are of recent frames.
DIGESTS_KEPT = 65_536
# The digests of this many most recent distinct copies of one (stream, seq) are kept: a
# flood of forks of one seq must not make each next frame dearer to compare (or to log).
DIGESTS_PER_SEQ = 8


class SeqRanges:
    """A set of seqs kept as sorted, disjoint [start, end] ranges (frames come in runs)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.starts, seq) - 1
        return i >= 0 and seq <= self.ends[i]

    def add(self, seq: int) -> None:
        if seq in self:
            return
        i = bisect.bisect_right(self.starts, seq)
        joins_left = i > 0 and self.ends[i - 1] == seq - 1
        joins_right = i < len(self.starts) and self.starts[i] == seq + 1
        if joins_left and joins_right:
            self.ends[i - 1] = self.ends[i]
            del self.starts[i], self.ends[i]
        elif joins_left:
            self.ends[i - 1] = seq
        elif joins_right:
            self.starts[i] = seq
        else:
            self.starts.insert(i, seq)
            self.ends.insert(i, seq)

    def holes(self) -> list[tuple[int, int]]:
        out = [(0, self.starts[0] - 1)] if self.starts and self.starts[0] > 0 else []
        out.extend((self.ends[i] + 1, self.starts[i + 1] - 1) for i in range(len(self.starts) - 1))
        return out


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Collector:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        segment_dir: Path,
        consumer: str,
        now: Callable[[], float],
        batch: int = 1000,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_segment_bytes: int = 64 * 1024 * 1024,
        max_segment_age_s: float = 3600.0,
        trim: bool = True,
        log: TextIO | None = None,
        abandoned_key: str | None = None,
        digests_kept: int = DIGESTS_KEPT,
    ) -> None:
        self._redis = redis
        self._key = stream
        # Segment file name -> its durable size, for files abandoned after a failed write
        # or fsync: the one record of that failure a later process can read (see
        # load_index).
        self._abandoned_key = abandoned_key or f"{stream}:abandoned-segments"
        self._marked: set[str] = set()  # names this process put under that key
        self._dir = segment_dir
        self._consumer = consumer
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._trim = trim
        self._log = log if log is not None else sys.stderr
        self._seen: dict[str, SeqRanges] = {}
        # (stream, seq) -> SHA-256 of the differing frames stored for it (the newest
        # DIGESTS_PER_SEQ), newest last.
        self._digests: OrderedDict[tuple[str, int], tuple[bytes, ...]] = OrderedDict()
        self._digests_kept = digests_kept
        self._out = SegmentWriter(
            segment_dir,
            consumer,
            now=now,
            max_bytes=max_segment_bytes,
            max_age_s=max_segment_age_s,
        )
        self._pause_file = os.environ.get(PAUSE_BEFORE_ACK_ENV)
        self._reported_gaps: list[tuple[str, int, int]] = []
        self._lost_ids: deque[str] = deque(maxlen=LOST_IDS_KEPT)
        self._reported_lost = 0
        self.written = 0
        self.skipped = 0
        self.acked = 0
        self.lost = 0  # entries deleted from the stream before their frame was stored
        self.forks = 0  # frames stored for an already-stored (stream, seq), bytes differing
        self._lock: int | None = None  # the directory's lock, held while running
        self._running = False  # within run() or run_once(): writes need the lock

    # -- start-up ----------------------------------------------------------------------
    def load_index(self, marked: Mapping[str, int] | None = None) -> None:
        """Learn every (stream, seq) already in the segment directory; cut partial tails.

        `marked` names files abandoned by any process (file name -> durable size, as
        `abandoned_key` holds them): records past that size are not counted as stored.
        """
        if not self._dir.exists():
            return
        # SECURITY: a file abandoned after a failed write or fsync may still hold frames of
        # that batch; never made durable, they must be written again, not counted as stored.
        # This process cuts its own such files back where it can now; those another
        # process abandoned are only distrusted past their durable size, never cut on the
        # word of Redis (a mark must not be able to destroy acknowledged frames).
        undurable = {self._dir / name: size for name, size in (marked or {}).items()}
        undurable.update(self._out.retry_abandoned())
        for path in segment_paths([self._dir]):
            try:
                removed = repair_tail(path)
            except SegmentError as exc:
                # Damage inside a file, or not a segment: left for verify to report. This
                # collector never appends to an existing file; it indexes what reads.
                self._say(str(exc), error=True)
                removed = 0
            if removed:
                self._say(f"cut a partial record ({removed} bytes) from the end of {path}")
            durable = undurable.get(path)
            with contextlib.suppress(SegmentError):  # not a segment: said above
                self._index_file(path, durable)

    def _index_file(self, path: Path, durable: int | None) -> None:
        """Learn the (stream, seq) of every frame of one file, up to `durable` bytes."""
        for item in read_segment(path):
            if item.data is None:
                continue
            if durable is not None and item.end > durable:
                break
            with contextlib.suppress(FrameError):
                frame = decode_frame(item.data)
                self._seen.setdefault(frame.stream, SeqRanges()).add(frame.seq)
                self._remember((frame.stream, frame.seq), hashlib.sha256(item.data).digest())

    def _remember(self, key: tuple[str, int], digest: bytes) -> None:
        known = self._digests.pop(key, ())
        if digest not in known:
            known = (*known, digest)[-DIGESTS_PER_SEQ:]
        self._digests[key] = known
        while len(self._digests) > self._digests_kept:
            self._digests.popitem(last=False)

    async def _abandoned_marks(self) -> dict[str, int]:
        """The abandoned files' durable sizes (file name -> bytes), as recorded in Redis.

        Marks this process made for files it has since cut back are removed. A mark that
        does not read as a size trusts nothing in its file: its frames are written again
        (a duplicate is harmless, a frame on no disk is not).
        """
        raw: Any = await self._redis.hgetall(self._abandoned_key)
        marks: dict[str, int] = {}
        for name, value in raw.items():
            text = _entry_id(name)
            try:
                marks[text] = max(int(value), 0)
            except (TypeError, ValueError):
                marks[text] = len(MAGIC)
        still = self._out.retry_abandoned()
        done = [name for name in self._marked if self._dir / name not in still]
        if done:
            await self._redis.hdel(self._abandoned_key, *done)
            self._marked.difference_update(done)
            for name in done:
                marks.pop(name, None)
        return marks

    async def _mark_abandoned(self) -> None:
        """Record in Redis every file this process abandoned (see `_abandoned_marks`)."""
        for path, durable in self._out.abandoned.items():
            if path.name in self._marked:
                continue
            try:
                await self._redis.hset(self._abandoned_key, path.name, durable)
            except RedisError as exc:
                self._say(
                    f"cannot record that {path} was abandoned ({exc}): cut it back to "
                    f"{durable} bytes before another collector starts on this directory",
                    error=True,
                )
                continue
            self._marked.add(path.name)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the loop ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Collect until `stop` is set."""
        self._hold_directory()
        self._running = True
        try:
            await self._start()
            while not stop.is_set():
                await self._round(block=True)
            self._out.close()
        finally:
            self._running = False
            self._release_directory()

    async def run_once(self) -> int:
        """Collect everything available now (own pending, claimable, new); frames written."""
        before = self.written
        self._hold_directory()
        self._running = True
        try:
            await self._start()
            while await self._round(block=False):
                pass
            self._out.close()
        finally:
            self._running = False
            self._release_directory()
        return self.written - before

    def _hold_directory(self, *, now: bool = False) -> None:
        """Take the segment directory's lock; SegmentError if another collector holds it.

        A directory that cannot be made yet holds no file to cut and none of ours: unless
        `now`, the lock is then taken before the first write (`_store`), which fails as
        that write would.
        """
        if self._lock is not None:
            return
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            if now:
                raise
            return
        path = self._dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # SECURITY: our start cuts partial tails; another collector's batch in flight
            # looks like one, and cutting it would lose frames it is about to acknowledge.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SegmentError(
                f"{self._dir} is in use by another collector (it holds {path}): run one "
                "collector per segment directory, each beside the others in a directory of "
                f"its own ({exc.strerror})"
            ) from exc
        self._lock = fd

    def _release_directory(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # closing releases the lock

    async def _start(self) -> None:
        self.load_index(await self._abandoned_marks())
        await self.ensure_group()
        await self._reread_own_pending()

    async def _reread_own_pending(self) -> int:
        """Store and acknowledge what was delivered to this consumer and never acknowledged
        (a crash, a failed write, claimed entries deleted from the stream); entries handled."""
        # Older than frames the current segment may hold: a new file keeps every file in
        # seq order, which verify checks.
        self._out.close()
        handled = 0
        start = "0-0"
        while True:
            reply: Any = await self._redis.xreadgroup(
                GROUP, self._consumer, {self._key: start}, count=self._batch
            )
            entries = _entries(reply)
            if not entries:
                return handled
            await self._store(entries)
            handled += len(entries)
            start = _entry_id(entries[-1][0])

    async def _round(self, *, block: bool) -> int:
        handled = await self._claim()
        reply: Any = await self._redis.xreadgroup(
            GROUP,
            self._consumer,
            {self._key: ">"},
            count=self._batch,
            block=self._block_ms if block else None,
        )
        entries = _entries(reply)
        if entries:
            await self._store(entries)
            handled += len(entries)
        if self._trim and handled:
            await trim_stream(self._redis, self._key)
        self._report_gaps()
        return handled

    async def _claim(self) -> int:
        """Take over entries another (dead) consumer left pending for too long."""
        handled = 0
        start = "0-0"
        while True:
            reply: Any = await self._redis.xautoclaim(
                self._key,
                GROUP,
                self._consumer,
                min_idle_time=self._claim_idle_ms,
                start_id=start,
                count=self._batch,
            )
            start = _entry_id(reply[0])
            claimed = list(reply[1])
            entries = [e for e in claimed if e is not None and e[0] is not None and e[1]]
            if entries:
                # Claimed frames are older than ones this collector may already have
                # written: a new file keeps every file in seq order, which verify checks.
                self._out.close()
                await self._store(entries)
                handled += len(entries)
            if len(entries) < len(claimed):
                # Redis 6.2 answers nil, without the id, for a claimed entry deleted from
                # the stream while pending; it is ours now, and our own pending history
                # names it, so that it can be acknowledged and reported lost.
                handled += await self._reread_own_pending()
            if start == "0-0" or not claimed:
                return handled

    async def _store(self, entries: list[Any]) -> None:
        ids: list[str] = []
        frames: list[bytes] = []
        # This batch's frames, not yet durable: (stream, seq) -> digests of the bytes (the
        # newest DIGESTS_PER_SEQ).
        stored: dict[tuple[str, int], list[bytes]] = {}
        lost: list[str] = []
        for entry_id, fields in entries:
            ids.append(_entry_id(entry_id))
            if not fields:
                # XADD refuses an entry without fields: this one was deleted from the stream
                # while pending. Acknowledged, or it would stay pending and pin the MINID.
                lost.append(_entry_id(entry_id))
                continue
            data = fields.get(FRAME_FIELD)
            # SECURITY: a record a segment cannot hold (empty or oversized) would end every
            # reading of its file there, and the next start's repair_tail would cut off the
            # acknowledged frames after it.
            if not isinstance(data, bytes) or not 0 < len(data) <= MAX_FRAME_BYTES:
                self._say(
                    f"entry {_entry_id(entry_id)} holds no frame (none, empty or over "
                    f"{MAX_FRAME_BYTES} bytes); acknowledged, not stored"
                )
                continue
            try:
                frame = decode_frame(data)
            except FrameError as exc:
                # Stored anyway: judging frames is verify's job, losing them is not ours.
                self._say(f"entry {_entry_id(entry_id)}: {exc}; stored for verify to report")
                frames.append(data)
                continue
            key = (frame.stream, frame.seq)
            digest = hashlib.sha256(data).digest()
            seen = self._seen.get(frame.stream)
            if (seen is not None and frame.seq in seen) or key in stored:
                known = (*self._digests.get(key, ()), *stored.get(key, ()))[-DIGESTS_PER_SEQ:]
                if digest in known:
                    self.skipped += 1  # redelivered after a crash: already durable on disk
                    continue
                # SECURITY: other bytes for a stored seq are a fork; dropping either copy
                # could keep the forged one and lose the genuine. Both are kept for verify.
                self._report_fork(_entry_id(entry_id), frame.stream, frame.seq, digest, known)
            copies = stored.setdefault(key, [])
            copies.append(digest)
            del copies[:-DIGESTS_PER_SEQ]
            frames.append(data)
        if frames:
            if self._running:
                # SECURITY: never a write into a directory another collector holds.
                self._hold_directory(now=True)
            try:
                self._out.write(frames)
                self._out.sync()  # durable before acknowledged
            except OSError:
                # SECURITY: a file abandoned now may hold this batch's frames past its
                # durable size; a later process learns that only from Redis.
                await self._mark_abandoned()
                raise
            self.written += len(frames)
        # SECURITY: a seq counts as stored only once it is durable; were it marked before a
        # failed write or fsync, the retry would skip it and acknowledge a frame on no disk.
        for (stream, seq), digests in stored.items():
            self._seen.setdefault(stream, SeqRanges()).add(seq)
            for digest in digests:
                self._remember((stream, seq), digest)
        if self._pause_file:
            _announce_pause(Path(self._pause_file))
            await asyncio.Event().wait()  # killed here by the crash test
        if ids:
            self.acked += await self._redis.xack(self._key, GROUP, *ids)
        # Counted once acknowledged: a batch that failed comes back, its lost entries too.
        for entry_id in lost:
            self._lose(entry_id)

    def _report_fork(
        self, entry_id: str, stream: str, seq: int, digest: bytes, known: tuple[bytes, ...]
    ) -> None:
        if not known:
            self._say(
                f"entry {entry_id}: stream {stream} seq {seq} is already stored and its "
                "digest is no longer remembered: stored again, verify compares the copies"
            )
            return
        self.forks += 1
        others = ", ".join(d.hex()[:16] for d in known)
        self._say(
            f"entry {entry_id}: FORK: stream {stream} seq {seq} arrived with other bytes "
            f"(sha256 {digest.hex()[:16]}) than the frame already stored (sha256 {others}): "
            "stored both; verify reports the pair as seq_fork",
            error=True,
        )

    def _lose(self, entry_id: str) -> None:
        self.lost += 1
        self._lost_ids.append(entry_id)
        self._say(
            f"entry {entry_id} was deleted from the stream before its frame was stored: "
            "the frame is lost (acknowledged; verify reports the hole)",
            error=True,
        )

    # -- gaps --------------------------------------------------------------------------
    def lost_entries(self) -> list[str]:
        """The ids of the latest lost entries (at most LOST_IDS_KEPT; `lost` counts all)."""
        return list(self._lost_ids)

    def gaps(self) -> list[tuple[str, int, int]]:
        """(stream, first missing seq, last missing seq) for every hole in this directory."""
        return [
            (stream, start, end)
            for stream, ranges in sorted(self._seen.items())
            for start, end in ranges.holes()
        ]

    def _report_gaps(self) -> None:
        gaps = self.gaps()
        if gaps != self._reported_gaps:
            for stream, start, end in gaps:
                if (stream, start, end) not in self._reported_gaps:
                    self._say(f"gap: stream {stream} lacks seq {start}..{end}")
            self._reported_gaps = gaps
        if self.lost != self._reported_lost:
            self._say(
                f"gap: {self.lost} frame(s) lost, deleted from the stream before they were "
                f"stored (latest entry {self._lost_ids[-1]})",
                error=True,
            )
            self._reported_lost = self.lost

    def _say(self, message: str, *, error: bool = False) -> None:
        level = "error: " if error else ""
        print(f"audit collect: {level}{message}", file=self._log, flush=True)


def _announce_pause(path: Path) -> None:
    path.write_text(str(os.getpid()))


def _entries(reply: Any) -> list[Any]:
    """The entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


def _entry_id(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def trim_stream(redis: aioredis.Redis, key: str) -> int:
    """XTRIM MINID below what every consumer group still needs; entries removed."""
    groups = await redis.xinfo_groups(key)
    if not groups:
        return 0  # nobody has read anything: nothing may go
    needed: list[str] = []
    for group in groups:
        name = _entry_id(group["name"])
        after_delivered = _next_id(_entry_id(group["last-delivered-id"]))
        if int(group["pending"]) > 0:
            summary: Any = await redis.xpending(key, name)
            oldest = summary.get("min") if isinstance(summary, dict) else None
            # None: acknowledged meanwhile; the stale last-delivered id is still safe.
            needed.append(_entry_id(oldest) if oldest is not None else after_delivered)
        else:
            needed.append(after_delivered)
    minid = min(needed, key=_id_key)
    removed: Any = await redis.xtrim(key, minid=minid, approximate=False)
    return int(removed)
