"""The frame: one record in a hash chain, and its msgpack codec with format versions.

A frame is the msgpack array `[version, stream, seq, prev, body, h]`:

    version  int    FORMAT_VERSION when written; older versions are read through CONVERTERS
    stream   str    one writer process lifetime, e.g. "20261129T044000Z-5f0c9a1e27b4d3c8"
    seq      int    0 for the stream's genesis frame, then +1 per frame, no gaps
    prev     bytes  `h` of frame seq-1 (32 zero bytes for the genesis frame)
    body     bytes  the msgpack-encoded record body, kept as the exact stored bytes
    h        bytes  SHA-256 over frame_hash_input(version, stream, seq, prev, body)

The hash covers the stored body bytes, never a re-encoding of the decoded body, so a
verifier needs only these bytes. The input is domain-separated and length-prefixed so
that no two different frames share it (see `frame_hash_input`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from audit.errors import FrameError, RecordError, UnknownFrameVersion

FORMAT_VERSION = 1
HASH_DOMAIN = b"gw-audit-frame\x00"
GENESIS_PREV = bytes(32)
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_BODY_BYTES = MAX_FRAME_BYTES - 4096
STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

BodyConverter = Callable[[dict[str, Any]], dict[str, Any]]

# version -> converter lifting a decoded body of that version to the next version.
# Reading a frame of version v applies CONVERTERS[v], CONVERTERS[v+1], ... up to
# FORMAT_VERSION. Hashes are always checked on the stored bytes before any conversion.
CONVERTERS: dict[int, BodyConverter] = {}
KNOWN_VERSIONS = frozenset({*CONVERTERS, FORMAT_VERSION})


def frame_hash_input(version: int, stream: str, seq: int, prev: bytes, body: bytes) -> bytes:
    sid = stream.encode("utf-8")
    return b"".join(
        (
            HASH_DOMAIN,
            struct.pack(">HH", version, len(sid)),
            sid,
            struct.pack(">Q", seq),
            prev,
            struct.pack(">Q", len(body)),
            body,
        )
    )


def frame_hash(version: int, stream: str, seq: int, prev: bytes, body: bytes) -> bytes:
    return hashlib.sha256(frame_hash_input(version, stream, seq, prev, body)).digest()


class FrameSealer:
    """Seals and encodes the frames of one stream, as `Frame.seal(...).encode()` does.

    The writer's path for every frame: the stream's part of the hash input is made once,
    no Frame object is built, and one packer serves every frame (a sealer belongs to one
    writer, on one event loop). `seal(seq, prev, body)` -> (h, encoded frame bytes).
    """

    __slots__ = ("_head", "_prefix", "stream")

    def __init__(self, stream: str) -> None:
        sid = stream.encode("utf-8")
        self.stream = stream
        self._prefix = HASH_DOMAIN + struct.pack(">HH", FORMAT_VERSION, len(sid)) + sid
        # The frame's bytes up to seq: array of 6, version, stream.
        self._head = b"\x96" + msgpack.packb(FORMAT_VERSION) + msgpack.packb(stream)

    def seal(self, seq: int, prev: bytes, body: bytes) -> tuple[bytes, bytes]:
        if len(prev) != 32:
            raise FrameError(f"prev is {len(prev)} bytes, not 32")
        # frame_hash_input, in one piece: one call into the hash instead of five
        h = hashlib.sha256(
            b"".join((self._prefix, _U64.pack(seq), prev, _U64.pack(len(body)), body))
        ).digest()
        # The frame's msgpack, spliced: a value packs the same wherever it stands, and
        # prev and h are 32-byte bins.
        size = len(body)
        if size < 0x100:
            bin_head = bytes((0xC4, size))
        elif size < 0x10000:
            bin_head = b"\xc5" + size.to_bytes(2, "big")
        else:
            bin_head = b"\xc6" + size.to_bytes(4, "big")
        data = b"".join(
            (self._head, _pack_int(seq), b"\xc4\x20", prev, bin_head, body, b"\xc4\x20", h)
        )
        return h, data


_U64 = struct.Struct(">Q")


def array_header(count: int) -> bytes:
    """msgpack's header of an array of `count` items (its items' bytes follow it)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def map_header(count: int) -> bytes:
    """msgpack's header of a map of `count` entries (its keys' and values' bytes follow)."""
    if count < 16:
        return bytes((0x80 | count,))
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def _pack_int(value: int) -> bytes:
    """msgpack's own form of a non-negative integer (the smallest that holds it)."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x100:
        return bytes((0xCC, value))
    if value < 0x10000:
        return b"\xcd" + value.to_bytes(2, "big")
    if value < 0x100000000:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


# A packer keeps the buffer its largest output needed: past this size it is replaced, so
# that one large record does not hold its size in memory for the life of the process.
_PACKER_KEEPS = 256 * 1024


def encode_body(body: Any) -> bytes:
    """msgpack bytes for a record body; RecordError if it cannot be stored."""
    try:
        data: bytes = body_packer().pack(body)
    except (TypeError, ValueError, OverflowError) as exc:
        del _packers.packer
        raise RecordError(f"record body is not storable as msgpack: {exc}") from exc
    after_packing(len(data))
    if len(data) > MAX_BODY_BYTES:
        raise RecordError(f"record body is {len(data)} bytes, at most {MAX_BODY_BYTES}")
    return data


_packers = threading.local()


def body_packer() -> msgpack.Packer:
    """This thread's packer for bodies: `msgpack.packb` without a packer made per call.

    A packer is not shared between threads and is left empty after every call (it resets
    itself when packing fails), so each call starts from nothing, as `packb` does; after a
    failure or a large body it is dropped for a new one.
    """
    try:
        packer: msgpack.Packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, strict_types=False)
    return packer


def after_packing(size: int) -> None:
    """Let this thread's packer go after it packed `size` bytes, if that grew it much."""
    if size > _PACKER_KEEPS:
        with contextlib.suppress(AttributeError):
            del _packers.packer


@dataclass(frozen=True)
class Frame:
    version: int
    stream: str
    seq: int
    prev: bytes
    body: bytes
    h: bytes

    @classmethod
    def seal(cls, stream: str, seq: int, prev: bytes, body: bytes) -> Frame:
        """A new frame of the current version following `prev`."""
        return cls(
            FORMAT_VERSION,
            stream,
            seq,
            prev,
            body,
            frame_hash(FORMAT_VERSION, stream, seq, prev, body),
        )

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [self.version, self.stream, self.seq, self.prev, self.body, self.h],
            use_bin_type=True,
        )
        return data

    def hash_ok(self) -> bool:
        return frame_hash(self.version, self.stream, self.seq, self.prev, self.body) == self.h

    def decode_body(self) -> dict[str, Any]:
        """The body as a dict of the current version; FrameError if it does not decode."""
        try:
            body = msgpack.unpackb(self.body, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise FrameError(
                f"stream {self.stream} seq {self.seq}: body does not decode: {exc}"
            ) from exc
        if not isinstance(body, dict):
            raise FrameError(f"stream {self.stream} seq {self.seq}: body is not a map")
        decoded: dict[str, Any] = body
        for version in range(self.version, FORMAT_VERSION):
            decoded = CONVERTERS[version](decoded)
        return decoded


def decode_frame(data: bytes) -> Frame:
    """Parse one frame's bytes; FrameError names what is wrong. Does not check `h`."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"frame is {len(data)} bytes, at most {MAX_FRAME_BYTES}")
    try:
        items = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(f"not a msgpack frame: {exc}") from exc
    if not isinstance(items, list) or len(items) != 6:
        raise FrameError("not a frame: expected a 6-item array")
    version, stream, seq, prev, body, h = items
    if isinstance(version, bool) or not isinstance(version, int):
        raise FrameError(f"frame version is not an integer: {version!r}")
    if version not in KNOWN_VERSIONS:
        raise UnknownFrameVersion(
            f"unknown frame version {version}; known: {', '.join(map(str, sorted(KNOWN_VERSIONS)))}"
        )
    if not isinstance(stream, str) or not STREAM_ID.fullmatch(stream):
        raise FrameError(f"bad stream id {stream!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 1 << 63:
        raise FrameError(f"stream {stream}: bad seq {seq!r}")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise FrameError(f"stream {stream} seq {seq}: prev is not 32 bytes")
    if not isinstance(body, bytes):
        raise FrameError(f"stream {stream} seq {seq}: body is not bytes")
    if not isinstance(h, bytes) or len(h) != 32:
        raise FrameError(f"stream {stream} seq {seq}: h is not 32 bytes")
    return Frame(version, stream, seq, prev, body, h)
