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

The genesis frame (seq 0) has body `{"record": "stream.start", "@timestamp": ...,
"previous": {"stream", "seq", "h"}}` citing the previous stream's last checkpoint frame
when the writer knew it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from audit.errors import FrameError
from audit.keys import SigningKey
from audit.record import RecordKind, timestamp

SIGNATURE_DOMAIN = b"gw-audit-checkpoint\x00"
NO_CHECKPOINT = bytes(32)


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


def genesis_body(at: float, previous: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"record": str(RecordKind.STREAM_START), "@timestamp": timestamp(at)}
    if previous is not None:
        body["previous"] = previous
    return body
