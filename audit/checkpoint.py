"""Signed checkpoints and the genesis frame's citation of the previous stream.

A checkpoint is a frame whose body is

    {"record": "checkpoint", "@timestamp": ..., "checkpoint": {
        "key_id": str, "signed": bytes, "signature": bytes (Ed25519 over DOMAIN + signed)}}

where `signed` is the msgpack array
`[stream, first_seq, last_seq, head, time, key_id, prev_checkpoint, final]`:
frames first_seq..last_seq are covered, `head` is `h` of frame last_seq, `prev_checkpoint`
is `h` of the stream's previous checkpoint frame (for a stream's first checkpoint: the
checkpoint its genesis frame cites, else 32 zero bytes) and `final` marks the checkpoint
written at clean shutdown. The verifier checks the signature over the stored `signed`
bytes and only then reads the fields from them: nothing is re-encoded.

A `CheckpointRef` names one checkpoint frame by stream, seq and `h`: what an auditor saves
(`latest_checkpoint(paths)`, or the newest of every stream no genesis cites:
`uncited_checkpoints(paths)`, or, not yet collected, the writers' marks in Redis:
`refs_of_marks`, the newest of every marked stream; all printed by `audit checkpoint`) so that a
later `verify --expect-checkpoint` can tell that the trail still reaches it. Its forms:

    20261129T044000Z-5f0c9a1e27b4d3c8:41:<64 hex digits of h>
    {"stream": "20261129T044000Z-5f0c9a1e27b4d3c8", "seq": 41, "h": "<64 hex>", "time": ...}

A saved checkpoint file (`parse_refs`) holds one such reference per line, at most one line
per stream and MAX_REFS lines; blank lines and lines starting with `#` are skipped:

    {"h": "<64 hex>", "seq": 41, "stream": "20261129T044000Z-5f0c9a1e27b4d3c8"}
    {"h": "<64 hex>", "seq": 7, "stream": "20261129T044100Z-0b2d4e6f8a1c3e5d"}

The genesis frame (seq 0) has body `{"record": "stream.start", "@timestamp": ...,
"previous": {"stream", "seq", "h"}, "cites": [{"stream", "seq", "h"}, ...]}`: `previous`
is the newest checkpoint any writer sharing the Redis stream marked (when there is one),
and `cites` (when not empty) the last checkpoint marked by each other stream that no
stream with a checkpoint of its own had cited yet, so that with several gateway instances
every stream's last checkpoint is cited by a later stream, not only the newest one's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from audit.errors import CheckpointRefError, FrameError, SegmentError
from audit.frame import STREAM_ID, Frame, decode_frame
from audit.keys import SigningKey
from audit.record import RecordKind, kind_of, timestamp
from audit.segment import read_segment, segment_paths

SIGNATURE_DOMAIN = b"gw-audit-checkpoint\x00"
NO_CHECKPOINT = bytes(32)
MAX_REF_CHARS = 1024  # a reference is about 150 characters; anything longer is not one
# A saved file names the live streams of one deployment (about one per gateway instance);
# these bound what a hostile file or Redis can make an auditor's tools read.
MAX_REFS = 1024
MAX_REFS_FILE_CHARS = 256 * 1024
_HEX_H = re.compile(r"[0-9a-f]{64}")
_SEQ = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Checkpoint:
    stream: str
    first_seq: int
    last_seq: int
    head: bytes
    time: float
    key_id: str
    prev_checkpoint: bytes
    final: bool = False

    def signed_bytes(self) -> bytes:
        data: bytes = msgpack.packb(
            [
                self.stream,
                self.first_seq,
                self.last_seq,
                self.head,
                self.time,
                self.key_id,
                self.prev_checkpoint,
                self.final,
            ],
            use_bin_type=True,
        )
        return data

    def body(self, signer: SigningKey) -> dict[str, Any]:
        if signer.key_id != self.key_id:
            raise ValueError(f"checkpoint names key {self.key_id}, signer is {signer.key_id}")
        signed = self.signed_bytes()
        return {
            "record": str(RecordKind.CHECKPOINT),
            "@timestamp": timestamp(self.time),
            "checkpoint": {
                "key_id": self.key_id,
                "signed": signed,
                "signature": signer.sign(SIGNATURE_DOMAIN + signed),
            },
        }


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint as read back: the stored signed bytes, their signature and fields."""

    checkpoint: Checkpoint
    signed: bytes
    signature: bytes


def read_checkpoint(body: dict[str, Any]) -> SignedCheckpoint:
    """The checkpoint in a decoded checkpoint body; FrameError if it is malformed."""
    part = body.get("checkpoint")
    if not isinstance(part, dict):
        raise FrameError("checkpoint body without a checkpoint map")
    signed, signature, key_id = part.get("signed"), part.get("signature"), part.get("key_id")
    if not isinstance(signed, bytes) or not isinstance(signature, bytes):
        raise FrameError("checkpoint without signed bytes and signature")
    try:
        items = msgpack.unpackb(signed, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(f"checkpoint signed bytes do not decode: {exc}") from exc
    if not isinstance(items, list) or len(items) != 8:
        raise FrameError("checkpoint signed bytes: expected an 8-item array")
    stream, first, last, head, when, signed_key, prev, final = items
    if (
        not isinstance(stream, str)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in (first, last))
        or not isinstance(head, bytes)
        or not isinstance(when, int | float)
        or not isinstance(signed_key, str)
        or not isinstance(prev, bytes)
        or not isinstance(final, bool)
    ):
        raise FrameError("checkpoint signed bytes: a field has the wrong type")
    if key_id != signed_key:
        raise FrameError(f"checkpoint names key {key_id!r} outside and {signed_key!r} inside")
    return SignedCheckpoint(
        Checkpoint(stream, first, last, head, float(when), signed_key, prev, final),
        signed,
        signature,
    )


def genesis_body(
    at: float, previous: dict[str, Any] | None, cites: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {"record": str(RecordKind.STREAM_START), "@timestamp": timestamp(at)}
    if previous is not None:
        body["previous"] = previous
    others = list(cites)
    if others:
        body["cites"] = others
    return body


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint frame, named as an auditor saves it: stream, seq, `h` (and its time)."""

    stream: str
    seq: int
    h: bytes
    time: float | None = field(default=None, compare=False)  # shown, never compared

    def __str__(self) -> str:
        return f"{self.stream}:{self.seq}:{self.h.hex()}"

    def to_json(self) -> str:
        doc: dict[str, Any] = {"stream": self.stream, "seq": self.seq, "h": self.h.hex()}
        if self.time is not None:
            doc["time"] = timestamp(self.time)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> CheckpointRef:
        """`STREAM:SEQ:HEX` or the JSON `to_json` writes; CheckpointRefError names the fault."""
        if len(text) > MAX_REF_CHARS:
            raise CheckpointRefError(
                f"a checkpoint reference is at most {MAX_REF_CHARS} characters, got {len(text)}"
            )
        text = text.strip()
        if text.startswith("{"):
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise CheckpointRefError(f"checkpoint reference: not JSON: {exc}") from exc
            if not isinstance(doc, dict) or not {"stream", "seq", "h"} <= doc.keys():
                raise CheckpointRefError(
                    'checkpoint reference: expected {"stream": …, "seq": …, "h": …}'
                )
            stream, seq, h = doc["stream"], doc["seq"], doc["h"]
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise CheckpointRefError(f"checkpoint reference: seq {seq!r} is not an integer")
            seq_text = str(seq)
        else:
            parts = text.split(":")
            if len(parts) != 3:
                raise CheckpointRefError(
                    f"checkpoint reference {text[:80]!r}: expected STREAM:SEQ:H (H: 64 hex digits)"
                )
            stream, seq_text, h = parts
        if not isinstance(stream, str) or not STREAM_ID.fullmatch(stream):
            raise CheckpointRefError(f"checkpoint reference: bad stream id {stream!r}")
        if not _SEQ.fullmatch(seq_text) or int(seq_text) >= 1 << 63:
            raise CheckpointRefError(f"checkpoint reference: bad seq {seq_text!r}")
        if not isinstance(h, str) or not _HEX_H.fullmatch(h.lower()):
            raise CheckpointRefError("checkpoint reference: h is not 64 hex digits")
        return cls(stream, int(seq_text), bytes.fromhex(h))


def ref_of_mark(raw: object) -> CheckpointRef:
    """The checkpoint a writer marked in Redis (msgpack `{stream, seq, h}`, see the writer's
    last-checkpoint key); CheckpointRefError when absent or malformed."""
    if not isinstance(raw, bytes):
        raise CheckpointRefError("no checkpoint is marked in Redis")
    if len(raw) > MAX_REF_CHARS:
        raise CheckpointRefError(f"the checkpoint mark is over {MAX_REF_CHARS} bytes")
    try:
        mark = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CheckpointRefError(f"the checkpoint mark does not decode: {exc}") from exc
    if not isinstance(mark, dict):
        raise CheckpointRefError("the checkpoint mark is not a map")
    stream, seq, h = mark.get("stream"), mark.get("seq"), mark.get("h")
    if not isinstance(h, bytes) or len(h) != 32:
        raise CheckpointRefError("the checkpoint mark's h is not 32 bytes")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise CheckpointRefError(f"the checkpoint mark's seq {seq!r} is not an integer")
    return CheckpointRef.parse(f"{stream}:{seq}:{h.hex()}")


def parse_refs(text: str) -> list[CheckpointRef]:
    """The references in a saved checkpoint file's text (see the module docstring).

    CheckpointRefError names the first fault and its line: a malformed reference, a second
    line for one stream, more than MAX_REFS references, or none at all.
    """
    if len(text) > MAX_REFS_FILE_CHARS:
        raise CheckpointRefError(
            f"a saved checkpoint file is at most {MAX_REFS_FILE_CHARS} characters"
        )
    refs: list[CheckpointRef] = []
    line_of: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            ref = CheckpointRef.parse(line)
        except CheckpointRefError as exc:
            raise CheckpointRefError(f"line {number}: {exc}") from exc
        earlier = line_of.get(ref.stream)
        if earlier is not None:
            # One line per stream: a later checkpoint of a stream implies its earlier ones,
            # so a second line is a damaged or edited file, not a wish.
            raise CheckpointRefError(
                f"line {number}: stream {ref.stream} is named again (first on line {earlier})"
            )
        if len(refs) == MAX_REFS:
            raise CheckpointRefError(f"line {number}: more than {MAX_REFS} checkpoint references")
        line_of[ref.stream] = number
        refs.append(ref)
    if not refs:
        raise CheckpointRefError("no checkpoint reference in it")
    return refs


def refs_of_marks(newest: object, by_stream: Mapping[object, object]) -> list[CheckpointRef]:
    """The newest checkpoint of every stream the writers marked in Redis, by stream id.

    `newest` is the last-checkpoint key's value (None when absent), `by_stream` the hash of
    marks by stream. CheckpointRefError names the first malformed mark (fail closed: an
    auditor must not save a partial list thinking it whole), or says there is none.
    """
    if len(by_stream) > MAX_REFS:
        raise CheckpointRefError(
            f"{len(by_stream)} streams are marked, more than the {MAX_REFS} a saved file names"
        )
    found: dict[str, CheckpointRef] = {}

    def add(ref: CheckpointRef, where: str) -> None:
        other = found.get(ref.stream)
        if other is not None and other.seq == ref.seq and other.h != ref.h:
            raise CheckpointRefError(f"{where}: another h for stream {ref.stream} seq {ref.seq}")
        if other is None or ref.seq > other.seq:
            found[ref.stream] = ref

    if newest is not None:
        add(ref_of_mark(newest), "the newest mark")
    for field_name, raw in by_stream.items():
        name = field_name.decode(errors="replace") if isinstance(field_name, bytes) else ""
        shown = repr(name[:80])
        try:
            ref = ref_of_mark(raw)
        except CheckpointRefError as exc:
            raise CheckpointRefError(f"the mark of stream {shown}: {exc}") from exc
        if ref.stream != name:
            # SECURITY: a mark filed under another stream's name is not the writer's.
            raise CheckpointRefError(f"the mark filed under {shown} names stream {ref.stream}")
        add(ref, f"the mark of stream {shown}")
    if not found:
        raise CheckpointRefError("no checkpoint is marked in Redis")
    return [found[stream] for stream in sorted(found)]


def _readable_frames(paths: Iterable[Path]) -> Iterator[tuple[Frame, dict[str, Any]]]:
    """Every frame of the segment files that decodes, with its body; the rest is skipped
    (verify reports it)."""
    for path in segment_paths(paths):
        try:
            for item in read_segment(path):
                if item.data is None:
                    continue
                try:
                    frame = decode_frame(item.data)
                    yield frame, frame.decode_body()
                except FrameError:
                    continue
        except SegmentError:
            continue


def latest_checkpoint(paths: Iterable[Path]) -> CheckpointRef | None:
    """The newest readable checkpoint frame in the segment files (by its signed time).

    It is not verified here: verify the trail with the keyring before saving what this says.
    Unreadable files and frames are skipped (verify reports them).
    """
    best: CheckpointRef | None = None
    for frame, body in _readable_frames(paths):
        found = _ref_of_checkpoint(frame, body)
        if found is not None and (
            best is None
            or (found.time or 0.0, found.stream, found.seq)
            > (best.time or 0.0, best.stream, best.seq)
        ):
            best = found
    return best


def uncited_checkpoints(paths: Iterable[Path]) -> list[CheckpointRef]:
    """The newest checkpoint of every stream in the files that no genesis there cites, and
    the newest of all: what `refs_of_marks` gives from Redis, read from collected files.

    A stream whose newest checkpoint a later genesis cites is pinned by that citation when
    the citing stream has a checkpoint of its own (listed or, in turn, cited): a citing
    stream with none is pinned by nothing, and deleted whole it would take the citation
    along. Not verified here (verify first); CheckpointRefError when there is none, or more
    than MAX_REFS to name.
    """
    newest: dict[str, CheckpointRef] = {}
    cited_by: dict[str, set[tuple[object, object, object]]] = {}
    for frame, body in _readable_frames(paths):
        if frame.seq == 0 and kind_of(body) == RecordKind.STREAM_START:
            cited = cited_by.setdefault(frame.stream, set())
            previous, others = body.get("previous"), body.get("cites")
            for mark in [previous, *(others if isinstance(others, list) else [])]:
                if isinstance(mark, dict):
                    cited.add((mark.get("stream"), mark.get("seq"), mark.get("h")))
            continue
        found = _ref_of_checkpoint(frame, body)
        held = newest.get(frame.stream)
        if found is not None and (held is None or found.seq > held.seq):
            newest[frame.stream] = found
    # SECURITY: only a citation its own stream's checkpoint reaches pins what it cites.
    pinned = set().union(*(marks for stream, marks in cited_by.items() if stream in newest))
    latest = max(newest.values(), key=lambda r: (r.time or 0.0, r.stream, r.seq), default=None)
    if latest is None:
        raise CheckpointRefError("no checkpoint in these files")
    refs = [
        ref
        for ref in newest.values()
        if ref is latest or (ref.stream, ref.seq, ref.h) not in pinned
    ]
    if len(refs) > MAX_REFS:
        raise CheckpointRefError(
            f"{len(refs)} streams end uncited, more than the {MAX_REFS} a saved file names"
        )
    return sorted(refs, key=lambda r: r.stream)


def _ref_of_checkpoint(frame: Frame, body: dict[str, Any]) -> CheckpointRef | None:
    if kind_of(body) != RecordKind.CHECKPOINT:
        return None
    try:
        cp = read_checkpoint(body).checkpoint
    except FrameError:
        return None
    return CheckpointRef(frame.stream, frame.seq, frame.h, cp.time)
