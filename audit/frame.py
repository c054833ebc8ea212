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

import hashlib
import re
import struct
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
    and no Frame object is built. `seal(seq, prev, body)` -> (h, encoded frame bytes).
    """

    __slots__ = ("_prefix", "stream")

    def __init__(self, stream: str) -> None:
        sid = stream.encode("utf-8")
        self.stream = stream
        self._prefix = HASH_DOMAIN + struct.pack(">HH", FORMAT_VERSION, len(sid)) + sid

    def seal(self, seq: int, prev: bytes, body: bytes) -> tuple[bytes, bytes]:
        digest = hashlib.sha256(self._prefix)
        digest.update(struct.pack(">Q", seq))
        digest.update(prev)
        digest.update(struct.pack(">Q", len(body)))
        digest.update(body)
        h = digest.digest()
        data: bytes = msgpack.packb(
            [FORMAT_VERSION, self.stream, seq, prev, body, h], use_bin_type=True
        )
        return h, data


def encode_body(body: Any) -> bytes:
    """msgpack bytes for a record body; RecordError if it cannot be stored."""
    try:
        data: bytes = msgpack.packb(body, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError(f"record body is not storable as msgpack: {exc}") from exc
    if len(data) > MAX_BODY_BYTES:
        raise RecordError(f"record body is {len(data)} bytes, at most {MAX_BODY_BYTES}")
    return data


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
