"""Every exception the audit package raises.

AuditError                      base: anything the audit trail refuses or cannot do
├── AuditUnavailable            the stream did not accept a frame (Redis down, timeout,
│                               writer closed): the caller must deny, nothing forwarded
├── RecordError                 a record body that cannot be stored (not msgpack-able,
│                               oversized, bad field value)
├── FrameError                  bytes that are not a frame
│   └── UnknownFrameVersion     a frame of a format version this reader does not know
├── SegmentError                a segment file that cannot be opened or read
├── SigningKeyError             signing keys / keyring missing, unreadable or malformed
├── CheckpointRefError          a saved checkpoint reference (stream, seq, h) that does not
│                               parse
└── LayoutError                 where the trail lives could not be found out (the CLI's
                                deployment layout, e.g. an unreadable gateway config)
"""

from __future__ import annotations


class AuditError(Exception):
    """Base of every audit error."""


class AuditUnavailable(AuditError):
    """The audit stream did not accept the frame; fail closed."""


class RecordError(AuditError):
    """A record body that cannot be stored as given."""


class FrameError(AuditError):
    """Bytes that do not decode as a frame of a known version."""


class UnknownFrameVersion(FrameError):
    """A frame whose format version has no converter to the current one."""


class SegmentError(AuditError):
    """A segment file that cannot be opened or read."""


class SigningKeyError(AuditError):
    """Signing keys or the public keyring are missing, unreadable or malformed."""


class CheckpointRefError(AuditError):
    """A saved checkpoint reference that does not parse."""


class LayoutError(AuditError):
    """The deployment layout (segment, key and Redis locations) could not be read."""
