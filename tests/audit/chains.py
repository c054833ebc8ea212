"""Building and rewriting chains and segment files by hand, as a forger would."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from audit.checkpoint import NO_CHECKPOINT, Checkpoint, genesis_body
from audit.frame import GENESIS_PREV, Frame, decode_frame, encode_body
from audit.keys import SigningKey
from audit.segment import MAGIC, read_segment, segment_paths


def read_frames(path: Path) -> list[Frame]:
    frames: list[Frame] = []
    for file in segment_paths([path]):
        frames.extend(decode_frame(item.data) for item in read_segment(file) if item.data)
    return frames


def write_segment(path: Path, frames: Iterable[Frame | bytes]) -> Path:
    with open(path, "wb") as out:
        out.write(MAGIC)
        for frame in frames:
            data = frame if isinstance(frame, bytes) else frame.encode()
            out.write(struct.pack(">I", len(data)) + data)
    return path


def build_chain(
    stream: str,
    bodies: Iterable[dict[str, Any]],
    signer: SigningKey,
    at: float,
    *,
    previous: dict[str, Any] | None = None,
    final: bool = True,
    cites: object = None,
) -> list[Frame]:
    """A well-formed stream: genesis, the bodies as given (unredacted), a checkpoint.

    `cites`, when given, is stored as the genesis's `cites` as it is (hostile or not).
    """
    genesis = genesis_body(at, previous)
    if cites is not None:
        genesis["cites"] = cites
    frames = [Frame.seal(stream, 0, GENESIS_PREV, encode_body(genesis))]
    for body in bodies:
        frames.append(Frame.seal(stream, len(frames), frames[-1].h, encode_body(body)))
    cp = Checkpoint(
        stream,
        0,
        len(frames) - 1,
        frames[-1].h,
        at,
        signer.key_id,
        previous["h"] if previous else NO_CHECKPOINT,
        final,
    )
    frames.append(Frame.seal(stream, len(frames), frames[-1].h, encode_body(cp.body(signer))))
    return frames


def rechain(frames: list[Frame], start: int) -> list[Frame]:
    """Recompute `prev` and `h` from index `start` on: what a forger without the key can do."""
    out = frames[:start]
    for frame in frames[start:]:
        prev = out[-1].h if out else GENESIS_PREV
        out.append(Frame.seal(frame.stream, frame.seq, prev, frame.body))
    return out


def with_body(frame: Frame, body: bytes) -> Frame:
    """The same frame with other body bytes and the old `h`: an in-place modification."""
    return Frame(frame.version, frame.stream, frame.seq, frame.prev, body, frame.h)
