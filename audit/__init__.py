"""The tamper-evident audit trail. Runs on an auditor's laptop: never imports `gateway`.

Modules: `record` (ECS-shaped bodies), `redact` (keyed-hash redaction), `frame` (frame
codec, versions, hash chain), `keys` (Ed25519 signing keys, keyring, rotation),
`dirlock` (one key change at a time in a key directory, across processes),
`checkpoint` (signed chain heads), `writer` (group-committed appends to a Redis stream),
`segment` (append-only segment files), `collector` (Redis stream -> segments), `verify`,
`replay`, `export` (HAR, JSON Lines, OCSF), `cli` (the `gateway audit …` commands).
"""

from audit.collector import Collector
from audit.errors import (
    AuditError,
    AuditUnavailable,
    FrameError,
    RecordError,
    SegmentError,
    SigningKeyError,
    UnknownFrameVersion,
)
from audit.keys import KeyDirectory, Keyring, SigningKey
from audit.record import BodyCapture, Person, RecordKind, event_record, http_record
from audit.redact import Redactor
from audit.verify import Finding, Report
from audit.writer import AuditWriter

__all__ = [
    "AuditError",
    "AuditUnavailable",
    "AuditWriter",
    "BodyCapture",
    "Collector",
    "Finding",
    "FrameError",
    "KeyDirectory",
    "Keyring",
    "Person",
    "RecordError",
    "RecordKind",
    "Redactor",
    "Report",
    "SegmentError",
    "SigningKey",
    "SigningKeyError",
    "UnknownFrameVersion",
    "event_record",
    "http_record",
]
