"""Reading records back for replay and export: frames -> decoded, merged request records.

`read_records(paths)` yields each decoded body once per (stream, seq), in file order,
skipping what does not decode (verify is the tool that judges; this one only reads).
`merged_records(records)` folds a proxied request's attempt and outcome into one view,
keyed by request id, in order of arrival, naming the frame that completed it; other
records pass through. `merge_requests(records)` gives only the bodies.

Filters match on the ECS fields: grant `gateway.grant.id`, actor `user.id` or
`user.email`, member `user.effective.id`, org `organization.id`, session
`gateway.session.ref` (raw id or its reference), time on `@timestamp`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from audit.errors import FrameError, SegmentError
from audit.frame import Frame, decode_frame
from audit.record import RecordKind, kind_of, session_ref
from audit.segment import read_segment, segment_paths

REQUEST_KINDS = frozenset({RecordKind.HTTP_ATTEMPT, RecordKind.HTTP_OUTCOME, RecordKind.DENIAL})
INTERNAL_KINDS = frozenset({RecordKind.STREAM_START, RecordKind.CHECKPOINT})


@dataclass(frozen=True)
class Record:
    stream: str
    seq: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return kind_of(self.body)


def record_of(frame: Frame) -> Record | None:
    try:
        return Record(frame.stream, frame.seq, frame.decode_body())
    except FrameError:
        return None


def read_records(
    paths: Iterable[Path],
    *,
    log: TextIO | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Record]:
    """Decoded records, once per (stream, seq); `progress` gets the bytes consumed."""
    seen: set[tuple[str, int]] = set()
    for path in segment_paths(paths):
        try:
            for item in read_segment(path):
                if item.data is None:
                    continue
                if progress is not None:
                    progress(len(item.data) + 4)
                try:
                    frame = decode_frame(item.data)
                except FrameError as exc:
                    print(f"{path}#{item.index}: skipped: {exc}", file=log or sys.stderr)
                    continue
                if (frame.stream, frame.seq) in seen:
                    continue
                seen.add((frame.stream, frame.seq))
                record = record_of(frame)
                if record is not None:
                    yield record
        except SegmentError as exc:
            print(f"skipped: {exc}", file=log or sys.stderr)


def printable(text: str) -> str:
    """`text` as a terminal may show it: control and format characters escaped.

    SECURITY: records hold client-supplied text (paths, bodies, reasons); an escape
    sequence or a bidi override printed raw would let it erase or reorder what an auditor
    sees of the trail. Tabs stay: they only move the cursor forward.
    """
    if text.isprintable():
        return text
    return "".join(
        char
        if char.isprintable() or char == "\t"
        else (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        for char in text
    )


def get(body: dict[str, Any], dotted: str) -> Any:
    value: Any = body
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def parse_time(text: str) -> float:
    """RFC 3339 / ISO 8601 (a trailing Z allowed) -> seconds since the epoch."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"{text!r}: a time needs a zone (e.g. Z)")
    return when.timestamp()


@dataclass(frozen=True)
class RecordFilter:
    grant: str | None = None
    actor: str | None = None
    member: str | None = None
    org: str | None = None
    session: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, body: dict[str, Any]) -> bool:
        if self.grant is not None and get(body, "gateway.grant.id") != self.grant:
            return False
        if self.actor is not None and self.actor not in (
            get(body, "user.id"),
            get(body, "user.email"),
        ):
            return False
        if self.member is not None and get(body, "user.effective.id") != self.member:
            return False
        if self.org is not None and get(body, "organization.id") != self.org:
            return False
        if self.session is not None and get(body, "gateway.session.ref") not in (
            self.session,
            session_ref(self.session),
        ):
            return False
        if self.since is not None or self.until is not None:
            stamp = body.get("@timestamp")
            try:
                when = parse_time(stamp) if isinstance(stamp, str) else None
            except ValueError:
                when = None
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when >= self.until:
                return False
        return True


def merge_outcome(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on top, maps merged key by key at every level."""
    # Without recursion: a forged record may nest maps as deep as msgpack decodes (about
    # a thousand levels), deeper than Python's recursion limit.
    out = dict(base)
    pending = [(out, over)]
    while pending:
        target, source = pending.pop()
        for key, value in source.items():
            current = target.get(key)
            if isinstance(value, dict) and isinstance(current, dict):
                merged = dict(current)
                target[key] = merged
                pending.append((merged, value))
            else:
                target[key] = value
    return out


class RequestMerger:
    """Folds each proxied request's attempt and outcome into one record, as records arrive.

    `add(record)` returns the record to show now (a request's merged body, named by the
    stream and seq of its outcome), or None while a request awaits its outcome (or for the
    internal stream-start and checkpoint records); `unfinished()` gives the attempts never
    followed by an outcome, with `event.outcome` "unknown".
    """

    def __init__(self) -> None:
        self._attempts: dict[str, Record] = {}

    def add(self, record: Record) -> Record | None:
        kind = record.kind
        if kind in INTERNAL_KINDS:
            return None
        request_id = get(record.body, "event.id")
        if kind not in REQUEST_KINDS or not isinstance(request_id, str):
            return record
        if kind == RecordKind.HTTP_ATTEMPT:
            self._attempts[request_id] = record
            return None
        attempt = self._attempts.pop(request_id, None)
        if attempt is None:
            return record
        return Record(record.stream, record.seq, merge_outcome(attempt.body, record.body))

    def unfinished(self) -> Iterator[Record]:
        for record in self._attempts.values():
            event = record.body.get("event")
            event = dict(event) if isinstance(event, dict) else {}
            event["outcome"] = "unknown"
            yield Record(record.stream, record.seq, {**record.body, "event": event})
        self._attempts = {}


def merged_records(records: Iterable[Record]) -> Iterator[Record]:
    """One record per proxied request (attempt + outcome merged) or per other event.

    A request is emitted at its outcome, named by the outcome's stream and seq; attempts
    never followed by an outcome are emitted at the end with `event.outcome` "unknown".
    """
    merger = RequestMerger()
    for record in records:
        merged = merger.add(record)
        if merged is not None:
            yield merged
    yield from merger.unfinished()


def merge_requests(records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    """The bodies of `merged_records(records)`."""
    for record in merged_records(records):
        yield record.body
