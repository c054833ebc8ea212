"""Segment files: the append-only files the collector writes and auditors verify.

A segment is MAGIC followed by records `[u32 big-endian length][frame bytes]`. Frames
are stored exactly as the writer encoded them. Files are written by one collector,
fsynced before the frames are acknowledged in Redis, rotated by size and age, and
never modified after rotation. A crash can leave a partial last record; the reader
reports it and the collector cuts it off on start (those frames were not acknowledged,
so Redis delivers them again). A failed write or fsync (disk full, I/O error) never
leaves a partial record for the next write to follow: the writer cuts the file back to
its last synced size, or abandons the file and starts a new one (`SegmentWriter`).

    with SegmentWriter(Path("var/audit"), "c1", now=time.time) as out:
        out.write([frame_bytes, ...]); out.sync()
    for item in read_segment(path): item.data or item.error
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from audit.errors import FrameError, SegmentError
from audit.frame import MAX_FRAME_BYTES, decode_frame

MAGIC = b"GW-AUDIT-SEGMENT\x00\x01"
SUFFIX = ".seg"
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class SegmentItem:
    """One record of a segment: its frame bytes, or why it could not be read."""

    path: Path
    index: int  # 0-based position in the file
    offset: int
    data: bytes | None
    error: str | None = None

    @property
    def end(self) -> int:
        """The file offset just past this record (its start, if it could not be read)."""
        return self.offset + (_LEN.size + len(self.data) if self.data is not None else 0)


def read_segment(path: Path) -> Iterator[SegmentItem]:
    """Every record of one segment, in file order; stops at the first unreadable one."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise SegmentError(f"{path}: cannot open: {exc}") from exc
    try:
        if handle.read(len(MAGIC)) != MAGIC:
            raise SegmentError(f"{path}: not an audit segment (bad magic)")
        index = 0
        while True:
            offset = handle.tell()
            head = handle.read(_LEN.size)
            if not head:
                return
            if len(head) < _LEN.size:
                yield SegmentItem(path, index, offset, None, "partial record length at end")
                return
            (length,) = _LEN.unpack(head)
            if length == 0 or length > MAX_FRAME_BYTES:
                yield SegmentItem(path, index, offset, None, f"bad record length {length}")
                return
            data = handle.read(length)
            if len(data) < length:
                yield SegmentItem(
                    path, index, offset, None, f"partial record at end ({len(data)}/{length})"
                )
                return
            yield SegmentItem(path, index, offset, data)
            index += 1
    finally:
        handle.close()


def segment_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories expand to their `*.seg` files, sorted by name."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(path.glob("*" + SUFFIX)))
        else:
            out.append(path)
    return out


def repair_tail(path: Path) -> int:
    """Cut a partial last record left by a crash; returns the bytes removed.

    A file cut short inside its magic (a crash while it was being created) holds no frame:
    it gets its whole magic back, so that it reads as an empty segment. A crash leaves
    damage only at the end: a partial record, or zeros where the file system grew the
    file without its data. A bad record length followed by anything else, or a length
    running past the end with whole frames ending the file after it, is damage inside the
    file (bit rot, an edit): SegmentError, and the file is left as it is, so that the
    acknowledged frames after it are not destroyed and verify reports it.
    """
    size = path.stat().st_size
    if size < len(MAGIC):
        with open(path, "rb") as handle:
            head = handle.read()
        if not MAGIC.startswith(head):
            raise SegmentError(f"{path}: not an audit segment (bad magic)")
        with open(path, "r+b") as handle:
            handle.seek(0)
            handle.write(MAGIC)
            handle.flush()
            os.fsync(handle.fileno())
        return 0
    good = len(MAGIC)
    for item in read_segment(path):
        if item.data is None:
            # SECURITY: only a crash's tail may go; never frames after damage inside.
            error = item.error or ""
            if (error.startswith("bad record length") and not _zeros_from(path, good)) or (
                error.startswith("partial record at end")
                and _frames_run_to_end(path, good + _LEN.size)
            ):
                raise SegmentError(
                    f"{path}: damaged at offset {good} ({error}), not at its end: "
                    "left as it is (verify reports it)"
                )
            break
        good = item.end
    if size > good:
        with open(path, "r+b") as handle:
            handle.truncate(good)
            handle.flush()
            os.fsync(handle.fileno())
    return size - good


def _zeros_from(path: Path, offset: int) -> bool:
    """Whether every byte of `path` from `offset` on is zero (a crash's unwritten tail)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 16):
            if chunk.count(0) != len(chunk):
                return False
    return True


# Chains of records `_frames_run_to_end` decodes before it gives up: bounds its work on a
# hostile tail (a torn write rarely holds even one).
_CHAINS_TRIED = 16


def _frames_run_to_end(path: Path, start: int) -> bool:
    """Whether whole records that decode as frames run from somewhere past `start` exactly
    to the end of `path`.

    `start` is where a record's data begins whose length runs past the end. A crash's torn
    write leaves the prefix of one frame there; whole frames ending the file instead say
    that the length was damaged and the frames after it are acknowledged ones.
    """
    with open(path, "rb") as handle:
        handle.seek(start)
        tail = handle.read()  # shorter than that record's length: at most MAX_FRAME_BYTES
    size = len(tail)
    # reaches[i]: records from offset i of `tail` end exactly at its end (found backwards,
    # so that the search stays linear in the tail whatever it holds).
    reaches = bytearray(size + 1)
    reaches[size] = 1
    for offset in range(size - _LEN.size, -1, -1):
        (length,) = _LEN.unpack_from(tail, offset)
        end = offset + _LEN.size + length
        if 0 < length <= MAX_FRAME_BYTES and end <= size and reaches[end]:
            reaches[offset] = 1
    tried = 0
    for offset in range(size):
        if not reaches[offset]:
            continue
        if _decodes_to_end(tail, offset):
            return True
        tried += 1
        if tried == _CHAINS_TRIED:
            return False
    return False


def _decodes_to_end(tail: bytes, offset: int) -> bool:
    """Whether each record from `offset` (they end exactly at the end) decodes as a frame."""
    while offset < len(tail):
        (length,) = _LEN.unpack_from(tail, offset)
        start = offset + _LEN.size
        try:
            decode_frame(tail[start : start + length])
        except FrameError:
            return False
        offset = start + length
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class SegmentWriter:
    """Appends frames to the current segment; rotates by size and age.

    A write or fsync that fails (ENOSPC, EIO, EFBIG, ...) may have left part of a record on
    disk, and a record appended after it would be unreadable, and so would everything after
    it. So after any failed write or sync the writer cuts the current file back to its size
    at the last successful sync (ftruncate + fsync) and goes on appending there; when even
    that fails, it abandons the file (closes it, never appends to it again; it is cut back
    by `retry_abandoned` once that works, and a restarted collector cuts a partial last
    record) and the next write starts a new segment. Either way the frames written since
    the last successful `sync()` are not in the file any more, or not trusted: the caller
    acknowledges none of them, and Redis delivers them again.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        now: Callable[[], float],
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 3600.0,
    ) -> None:
        self.directory = directory
        self.name = name
        self._now = now
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._fd = -1
        self._file: Path | None = None
        self._size = 0  # bytes in the current file, as written
        self._synced = 0  # bytes of the current file made durable by the last good fsync
        self._opened_at = 0.0
        self._counter = 0
        self.rotations = 0
        self.cut_backs = 0  # failed writes undone by cutting the file back
        # Files left after a failure that could not be undone -> their durable size.
        self.abandoned: dict[Path, int] = {}

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def current(self) -> Path | None:
        return self._file

    def _open_new(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(self._now(), UTC).strftime("%Y%m%dT%H%M%S")
        while True:
            self._counter += 1
            path = self.directory / f"{stamp}-{self.name}-{self._counter:06d}{SUFFIX}"
            if not path.exists():
                break
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        try:
            _write_all(fd, MAGIC)
            os.fsync(fd)
            _fsync_dir(self.directory)
        except OSError:
            # A file without its whole magic would stop every later reading of the directory.
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd = fd
        self._file = path
        self._size = self._synced = len(MAGIC)
        self._opened_at = self._now()

    def write(self, frames: Iterable[bytes]) -> None:
        """Append frames (not yet durable: call sync()).

        Raises SegmentError (nothing written) for a record a segment cannot hold, OSError
        (everything since the last sync() undone) when the file system fails.
        """
        records = list(frames)
        for data in records:
            if not 0 < len(data) <= MAX_FRAME_BYTES:
                # The reader stops at such a record and repair_tail would cut what follows.
                raise SegmentError(f"a record of {len(data)} bytes does not fit a segment")
        try:
            for data in records:
                if self._file is None or self._due():
                    self._rotate()
                _write_all(self._fd, _LEN.pack(len(data)) + data)
                self._size += _LEN.size + len(data)
        except OSError:
            self._undo_unsynced()
            raise

    def _due(self) -> bool:
        return self._size >= self.max_bytes or self._now() - self._opened_at >= self.max_age_s

    def _rotate(self) -> None:
        if self._file is not None:
            os.fsync(self._fd)
            self._synced = self._size
            self._close_current()
            self.rotations += 1
        self._open_new()

    def sync(self) -> None:
        """Make everything written so far durable (OSError: undone, see the class)."""
        if self._file is None:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            self._undo_unsynced()
            raise
        self._synced = self._size

    def _undo_unsynced(self) -> None:
        """After a failed write or fsync: back to the last synced size, or a new file."""
        if self._file is None:
            return
        try:
            # SECURITY: a partial record followed by more records would make them, and the
            # acknowledged frames before them once repair_tail cut there, unreadable.
            os.ftruncate(self._fd, self._synced)
            os.fsync(self._fd)
        except OSError:
            # SECURITY: nothing is ever appended after bytes that could not be undone.
            self.abandoned[self._file] = self._synced
            with contextlib.suppress(OSError):
                self._close_current()
            return
        self._size = self._synced
        self.cut_backs += 1

    def retry_abandoned(self) -> dict[Path, int]:
        """Cut abandoned files back to their durable size where that works now; returns the
        files still holding bytes past it (path -> durable size): nothing past that size may
        be counted as stored, since it was never made durable."""
        for path, durable in list(self.abandoned.items()):
            try:
                with open(path, "r+b") as handle:
                    handle.truncate(durable)
                    handle.flush()
                    os.fsync(handle.fileno())
            except FileNotFoundError:
                del self.abandoned[path]
            except OSError:
                continue
            else:
                del self.abandoned[path]
        return dict(self.abandoned)

    def _close_current(self) -> None:
        # Forgotten before closing: a failed close still releases the descriptor, whose
        # number may then belong to another file.
        fd, self._fd, self._file = self._fd, -1, None
        os.close(fd)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.sync()
        finally:
            if self._file is not None:
                self._close_current()
