"""The writer: chains record bodies into frames and appends them to a Redis stream.

    writer = AuditWriter(redis, signer, stream=keys.audit_stream(), now=clock.now,
                         checkpoint_every_frames=1000, checkpoint_every_s=10.0,
                         redactor=redactor, last_checkpoint_key=keys.audit_last_checkpoint())
    await writer.open()                      # genesis frame, citing the last checkpoint
    seq = await writer.append(body)          # returns once Redis accepted the frame
    done = writer.submit(body)               # the same without a coroutine: a Future[int]
    await writer.close()                     # final signed checkpoint

Signature:
    AuditWriter(redis: redis.asyncio.Redis, signer: SigningKey, *, stream: str,
                now: Callable[[], float], checkpoint_every_frames: int = 1000,
                checkpoint_every_s: float = 10.0, redactor: Redactor | None = None,
                last_checkpoint_key: str | None = None, timeout_s: float = 2.0)
    await open() -> None; await append(body: Mapping[str, Any]) -> int;
    submit(body: Mapping[str, Any]) -> asyncio.Future[int];
    await checkpoint() -> int | None; await close() -> None; .stream_id: str

`append` (and `submit`) redacts the body (an `audit.exchange.ExchangeRecord` through its
own encoder, which stores the same bytes), gives it the next seq and chains it at once
(so seq order is call order), then waits for the group commit: every frame queued while
no batch is in flight goes out in ONE command (a Lua script XADDing each frame in order,
plus the checkpoint mark when the batch holds a checkpoint), started on the next
event-loop tick.
A request's cost is thus one Redis round trip shared with the other requests of that tick,
and one command for the whole batch (a pipeline of N commands costs N to pack and parse).
`pipelines` counts these batches.

Failure: if Redis does not accept a batch (any error, `timeout_s`, a reply that does not
count every frame appended, or the flush cancelled before the reply), every append in it
and every append queued behind it raises AuditUnavailable, and the stream ends there
(its tail stays unsealed). The next append starts a new stream whose genesis cites the
last checkpoint Redis accepted, so that no stream ever has a seq that Redis refused
followed by one it kept. (A script stops at its first failing call, so a refused batch
never has a frame kept after one refused.)

Several writers (one per gateway instance) append to one Redis stream, each frame naming
its own stream id. Each checkpoint's mark goes both to the last-checkpoint key (the newest
of any writer: what a new stream's `previous` cites and `audit checkpoint` prints) and,
under its stream id, to the hash `<last-checkpoint key>:by-stream`. A new stream's genesis
also `cites` every mark in that hash (at most MAX_CITED, besides `previous`), and the batch
that appends the new stream's first checkpoint (whose own mark joins the hash in the same
script) removes each mark the genesis cited unless a newer one replaced it meanwhile. Until
then a cited mark stays: a citing stream with no checkpoint yet is pinned by nothing an
auditor saves, and could be deleted whole with its citations. So every stream's last
checkpoint, clean shutdown or crash, is cited by the next stream any instance starts, and
cutting a stream back is caught by verify (`truncated`) with several instances as with
one; a live stream's later marks are added again.

Durability is Redis's: with `appendfsync always` an accepted frame is on disk before the
reply; with `everysec` up to a second of accepted frames can be lost in a Redis crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from audit.checkpoint import NO_CHECKPOINT, Checkpoint, genesis_body
from audit.errors import AuditUnavailable, RecordError
from audit.exchange import ExchangeRecord
from audit.frame import GENESIS_PREV, FrameSealer, encode_body
from audit.keys import SigningKey
from audit.redact import Redactor

FRAME_FIELD = b"f"  # the one field of each Redis stream entry: the frame's bytes

# KEYS: the stream, the last-checkpoint key, the marks by stream. ARGV: the checkpoint mark
# ("" for none) and its stream, the number N of marks the batch's genesis cites, then N
# (stream, mark) pairs to remove unless replaced since, then the frames in seq order, each
# XADDed as one entry with its bytes in FRAME_FIELD.
APPEND_SCRIPT = f"""
local first = 4 + 2 * tonumber(ARGV[3])
for i = first, #ARGV do
  redis.call('XADD', KEYS[1], '*', '{FRAME_FIELD.decode()}', ARGV[i])
end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
end
for i = 4, first - 1, 2 do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
end
return #ARGV - first + 1
"""
# Sent by its digest (EVALSHA) as Redis itself names it; the source only when Redis lost it.
APPEND_SCRIPT_SHA = hashlib.sha1(APPEND_SCRIPT.encode(), usedforsecurity=False).hexdigest()
# A genesis cites at most this many other streams' marks (the rest wait for the next one).
MAX_CITED = 256


def marks_by_stream_key(last_checkpoint_key: str) -> str:
    """The hash of every stream's newest checkpoint mark, beside the last-checkpoint key."""
    return f"{last_checkpoint_key}:by-stream"


def new_stream_id(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(8)


class AuditWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        signer: SigningKey,
        *,
        stream: str,
        now: Callable[[], float],
        checkpoint_every_frames: int = 1000,
        checkpoint_every_s: float = 10.0,
        redactor: Redactor | None = None,
        last_checkpoint_key: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        if checkpoint_every_frames < 1:
            raise ValueError(f"checkpoint_every_frames must be >= 1, got {checkpoint_every_frames}")
        if checkpoint_every_s <= 0:
            raise ValueError(f"checkpoint_every_s must be > 0, got {checkpoint_every_s}")
        self._redis = redis
        # redis-py leaves its command call untyped: typed here, once.
        self._command: Callable[..., Awaitable[Any]] = redis.execute_command
        self._signer = signer
        self._key = stream
        self._checkpoint_key = last_checkpoint_key or f"{stream}:last-checkpoint"
        self._marks_key = marks_by_stream_key(self._checkpoint_key)
        # The append script's KEYS, as its command names them after the script.
        self._script_keys = (3, self._key, self._checkpoint_key, self._marks_key)
        # Marks read at open() for the first genesis to cite, and the (stream, raw mark)
        # pairs that the batch with the first stream's first checkpoint removes from the
        # marks by stream.
        self._to_cite: list[dict[str, Any]] = []
        self._uncite: list[tuple[bytes, bytes]] = []
        self._now = now
        self._every_frames = checkpoint_every_frames
        self._every_s = checkpoint_every_s
        # Without a configured key, equal secrets correlate only within this process.
        self._redactor = redactor or Redactor(os.urandom(32), "ephemeral")
        self._timeout_s = timeout_s
        self.stream_id = ""
        self._sealer = FrameSealer("-")
        self._seq = 0
        self._head = GENESIS_PREV
        self._last_cp_seq = -1  # seq of the last checkpoint frame in this stream
        self._last_cp_h = NO_CHECKPOINT
        self._last_cp_at = 0.0
        self._frames_since_cp = 0
        self._accepted_cp: dict[str, Any] | None = None  # last checkpoint Redis accepted
        # The group commit's queue: the frames' bytes and their futures, in seq order from
        # `_first_seq` (a batch's seqs follow each other: a refused batch empties the queue
        # before the next stream begins), and the newest checkpoint mark among them.
        self._frames: list[bytes] = []
        self._waiters: list[asyncio.Future[int]] = []
        self._first_seq = 0
        self._mark: dict[str, Any] | None = None
        self._flushing = False
        self._broken = True  # no stream until open()
        self._opened = False
        self._closed = False
        self._timer: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self.pipelines = 0  # batches sent: with group commit, far fewer than frames
        self.frames = 0  # frames Redis accepted

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        """Start a stream (genesis frame citing the last checkpoint) and the checkpoint timer."""
        if self._opened:
            raise RuntimeError("AuditWriter.open() called twice")
        self._opened = True
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self._redis.get(self._checkpoint_key)
                marks: Any = await self._redis.hgetall(self._marks_key)
        except (RedisError, OSError, TimeoutError) as exc:
            raise AuditUnavailable(f"audit stream unreachable: {exc}") from exc
        self._accepted_cp = _read_cited(raw)
        for field, value in sorted(marks.items()):
            if len(self._uncite) == MAX_CITED:
                break
            cited = _read_cited(value)
            # Unreadable marks are skipped before counting: they must not crowd out
            # readable ones that wait to be cited.
            if cited is not None and isinstance(field, bytes) and isinstance(value, bytes):
                self._uncite.append((field, value))
                if cited != self._accepted_cp:
                    self._to_cite.append(cited)
        await self._begin_stream()
        self._timer = asyncio.create_task(self._tick(), name="audit-checkpoint-timer")

    async def close(self) -> None:
        """Write the final signed checkpoint and stop; appends after this fail."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._opened and not self._broken:
            with contextlib.suppress(AuditUnavailable):
                await self._queue_checkpoint(final=True)
        self._closed = True
        flush = self._flush_task
        if flush is not None and not flush.done():
            with contextlib.suppress(Exception):
                await flush

    # -- appending ---------------------------------------------------------------------
    async def append(self, body: Mapping[str, Any]) -> int:
        """Chain one record body; returns its seq once Redis accepted the frame.

        Raises RecordError for a body that cannot be stored (nothing is chained) and
        AuditUnavailable when Redis did not accept it: the caller must fail closed.
        """
        return await self.submit(body)

    def submit(self, body: Mapping[str, Any]) -> asyncio.Future[int]:
        """Chain one record body now; the future gives its seq once Redis accepted it.

        `append` without the coroutine: for a caller that need not wait (a task per
        record would cost more than the record). Raises RecordError at once for a body
        that cannot be stored; the future fails with AuditUnavailable when Redis did not
        accept the frame.
        """
        if self._closed or not self._opened:
            raise AuditUnavailable("the audit writer is not open")
        if type(body) is ExchangeRecord:
            # The exchange's shared parts are redacted once per flow; the same bytes as
            # the redactor's own path (see audit.exchange).
            data = body.encode(self._redactor)
        elif isinstance(body, Mapping):
            data = self._redactor.scrub_encoded(body, encode_body)
        else:
            raise RecordError(f"a record body is a mapping, got {type(body).__name__}")
        if self._broken:
            # The previous stream ended at a refused batch: continue in a fresh one.
            self._begin_stream()
        done = self._queue_frame(data)
        self._frames_since_cp += 1
        if (
            self._frames_since_cp >= self._every_frames
            or self._now() - self._last_cp_at >= self._every_s
        ):
            self._queue_checkpoint(final=False)
        return done

    async def checkpoint(self) -> int | None:
        """Seal what was appended since the last checkpoint; the checkpoint's seq, or None."""
        if self._closed or self._broken or self._frames_since_cp == 0:
            return None
        return await self._queue_checkpoint(final=False)

    @property
    def seq(self) -> int:
        """The seq the next frame will get."""
        return self._seq

    # -- internals ---------------------------------------------------------------------
    def _begin_stream(self) -> asyncio.Future[int]:
        at = self._now()
        self.stream_id = new_stream_id(at)
        self._sealer = FrameSealer(self.stream_id)
        self._seq = 0
        self._head = GENESIS_PREV
        self._last_cp_seq = -1
        self._last_cp_at = at
        self._frames_since_cp = 0
        cited = self._accepted_cp
        self._last_cp_h = cited["h"] if cited else NO_CHECKPOINT
        self._broken = False
        # Only the first stream cites the others' marks read at open(); a stream begun after
        # a refused batch cites this writer's own last accepted checkpoint.
        others, self._to_cite = self._to_cite, []
        return self._queue_frame(encode_body(genesis_body(at, cited, others)))

    def _queue_frame(self, data: bytes, mark: dict[str, Any] | None = None) -> asyncio.Future[int]:
        """Chain `data` as the next frame; the future gives its seq once Redis accepted it."""
        seq = self._seq
        h, encoded = self._sealer.seal(seq, self._head, data)
        self._head = h
        self._seq = seq + 1
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not self._frames:
            self._first_seq = seq
        self._frames.append(encoded)
        self._waiters.append(done)
        if mark is not None:
            self._mark = {**mark, "seq": seq, "h": h}
        if not self._flushing:
            self._flushing = True
            # Group commit: everything queued during this tick goes out in one batch.
            asyncio.get_running_loop().call_soon(self._start_flush)
        return done

    def _queue_checkpoint(self, *, final: bool) -> asyncio.Future[int]:
        at = self._now()
        signer = self._signer.current()
        cp = Checkpoint(
            stream=self.stream_id,
            first_seq=max(self._last_cp_seq, 0),
            last_seq=self._seq - 1,
            head=self._head,
            time=at,
            key_id=signer.key_id,
            prev_checkpoint=self._last_cp_h,
            final=final,
        )
        done = self._queue_frame(encode_body(cp.body(signer)), mark={"stream": self.stream_id})
        self._last_cp_seq = self._seq - 1
        self._last_cp_h = self._head
        self._last_cp_at = at
        self._frames_since_cp = 0
        return done

    def _start_flush(self) -> None:
        self._flush_task = asyncio.create_task(self._flush(), name="audit-flush")

    async def _flush(self) -> None:
        waiters: list[asyncio.Future[int]] = []
        try:
            while self._frames:
                frames, waiters, first, mark = (
                    self._frames,
                    self._waiters,
                    self._first_seq,
                    self._mark,
                )
                self._frames, self._waiters, self._mark = [], [], None
                # SECURITY: the marks the genesis cites are removed only with the stream's
                # first checkpoint, which then pins the genesis in their place; if a batch
                # is refused first they stay in Redis for another stream to cite.
                uncite: list[tuple[bytes, bytes]] = []
                if mark is not None:
                    uncite, self._uncite = self._uncite, []
                try:
                    await self._send(frames, mark, uncite)
                except Exception as exc:  # SECURITY: whatever failed, Redis did not accept
                    self._refuse(waiters, exc)
                    continue
                self.pipelines += 1
                self.frames += len(frames)
                if mark is not None:
                    self._accepted_cp = mark
                for seq, done in enumerate(waiters, first):
                    if not done.done():  # an awaiter that left cancelled its future
                        done.set_result(seq)
        except BaseException as exc:  # cancelled: nobody may wait for a reply that never comes
            self._refuse(waiters, exc)
            raise
        finally:
            self._flushing = False

    async def _send(
        self,
        frames: list[bytes],
        mark: dict[str, Any] | None,
        uncite: list[tuple[bytes, bytes]],
    ) -> None:
        """One command for the whole batch; returns once Redis appended every frame."""
        args: list[Any] = [
            *self._script_keys,
            msgpack.packb(mark, use_bin_type=True) if mark else b"",
            mark["stream"] if mark else "",
            len(uncite),
        ]
        for pair in uncite:
            args += pair
        args += frames
        command = self._command
        async with asyncio.timeout(self._timeout_s):
            # The script appends every frame in order (and stores the checkpoint mark)
            # before Redis replies. Called by digest through the client's own command
            # call: redis-py's Script object would add its own checks to every batch.
            try:
                reply = await command("EVALSHA", APPEND_SCRIPT_SHA, *args)
            except NoScriptError:
                # Redis lost its script cache (restart, failover, SCRIPT FLUSH): the script
                # did not run, so nothing was appended; EVAL runs it and caches it again.
                reply = await command("EVAL", APPEND_SCRIPT, *args)
        if reply != len(frames):
            # SECURITY: success only when Redis says it appended every frame of the batch.
            raise AuditUnavailable(f"appended {reply!r} of {len(frames)} frames")

    def _refuse(self, waiters: list[asyncio.Future[int]], failure: BaseException) -> None:
        # SECURITY: fail closed. Frames queued behind a refused batch chain onto frames
        # Redis may not hold, so they are refused too and the stream ends here.
        self._broken = True
        self._uncite = []  # the next stream does not cite them: they stay for another
        refused = [*waiters, *self._waiters]
        self._frames, self._waiters, self._mark = [], [], None
        error = AuditUnavailable(f"the audit stream did not accept the frames: {failure}")
        for done in refused:
            if not done.done():
                done.set_exception(error)
                # Genesis and checkpoint futures may have no awaiter: their failure counts
                # as retrieved here, so it is not reported as "never retrieved" (awaiters
                # still get it raised). No callback per frame on the path that succeeds.
                done.exception()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            if self._broken or self._frames_since_cp == 0:
                continue
            with contextlib.suppress(AuditUnavailable):
                await self._queue_checkpoint(final=False)


def _read_cited(raw: object) -> dict[str, Any] | None:
    """The last checkpoint stored in Redis, or None when absent or unreadable."""
    if not isinstance(raw, bytes):
        return None
    try:
        value = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("stream"), str)
        and isinstance(value.get("seq"), int)
        and isinstance(value.get("h"), bytes)
        and len(value["h"]) == 32
    ):
        return {"stream": value["stream"], "seq": value["seq"], "h": value["h"]}
    return None
