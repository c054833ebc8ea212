"""Segment files: the append-only files the collector writes and auditors verify.

A segment is MAGIC followed by records `[u32 big-endian length][frame bytes]`. Frames
are stored exactly as the writer encoded them. Files are written by one collector,
fsynced before the frames are acknowledged in Redis, rotated by size and age, and
never modified after rotation. A crash can leave a partial last record; the reader
reports it and the collector cuts it off on start (those frames were not acknowledged,
so Redis delivers them again).

    with SegmentWriter(Path("var/audit"), "c1", now=time.time) as out:
        out.write([frame_bytes, ...]); out.sync()
    for item in read_segment(path): item.data or item.error
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from audit.errors import SegmentError
from audit.frame import MAX_FRAME_BYTES

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
    """Cut a partial last record left by a crash; returns the bytes removed."""
    good = len(MAGIC)
    for item in read_segment(path):
        if item.data is None:
            break
        good = item.offset + _LEN.size + len(item.data)
    size = path.stat().st_size
    if size > good:
        with open(path, "r+b") as handle:
            handle.truncate(good)
            handle.flush()
            os.fsync(handle.fileno())
    return size - good


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends frames to the current segment; rotates by size and age."""

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
        self._size = 0
        self._opened_at = 0.0
        self._counter = 0
        self.rotations = 0

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
        os.write(fd, MAGIC)
        self._fd = fd
        self._file = path
        self._size = len(MAGIC)
        self._opened_at = self._now()
        _fsync_dir(self.directory)

    def write(self, frames: Iterable[bytes]) -> None:
        """Append frames (not yet durable: call sync())."""
        for data in frames:
            if not 0 < len(data) <= MAX_FRAME_BYTES:
                # The reader stops at such a record and repair_tail would cut what follows.
                raise SegmentError(f"a record of {len(data)} bytes does not fit a segment")
            if self._file is None or self._due():
                self._rotate()
            record = _LEN.pack(len(data)) + data
            view = memoryview(record)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._size += len(record)

    def _due(self) -> bool:
        return self._size >= self.max_bytes or self._now() - self._opened_at >= self.max_age_s

    def _rotate(self) -> None:
        if self._file is not None:
            self.sync()
            os.close(self._fd)
            self._file = None
            self.rotations += 1
        self._open_new()

    def sync(self) -> None:
        """Make everything written so far durable."""
        if self._file is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            os.close(self._fd)
            self._file = None
