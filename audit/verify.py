"""`verify`: checks segment files and reports every finding with its file and frame.

Per frame: it decodes, its version is known, `h` recomputes over the stored bytes.
Per stream: seqs are contiguous from the genesis frame (a hole is a deletion; the same
seq with other bytes is a fork), each `prev` is the previous frame's `h`, frames of a
stream appear in seq order within a file, the genesis frame is well-formed and its
citations of other streams' checkpoints (`previous`, and `cites` with several gateway
instances) match (a cited checkpoint beyond the cited stream's last frame means that
stream was truncated). Per checkpoint: the
signature verifies against the keyring, the key was valid at the checkpoint's time,
the signed range and head match the recomputed chain, and checkpoints link. Frames
after the last checkpoint are an unsealed tail, and a stream whose last frame is a
checkpoint without `final` is unfinished (warnings: a live or crashed writer leaves
either; so does a tail cut off at a checkpoint, which `--strict` therefore fails). No
denylisted secret may appear in plain text.

Findings (code: meaning):
    unreadable          a segment file cannot be opened or is not a segment
    decode_error        a record that does not decode as a frame (or a partial record)
    unknown_version     a frame of a format version this verifier does not know
    hash_mismatch       `h` does not recompute: the frame was modified
    prev_mismatch       `prev` is not the previous frame's `h`: inserted or replaced frames
    seq_gap             seqs missing: deleted frames
    seq_fork            two different frames with one (stream, seq): names both copies,
                        their hashes, and which one the next frame's `prev` follows
    out_of_order        a frame after a later frame of its stream in the same file
    no_genesis          a stream without its seq-0 frame
    bad_genesis         a seq-0 frame that is not a stream start with a zero `prev`
    body_error          a body that does not decode, or is nested too deeply to scan
    bad_checkpoint      a checkpoint body that cannot be read
    unknown_key         a checkpoint signed with a key not in the keyring
    bad_signature       a checkpoint whose signature does not verify
    key_outside_window  a checkpoint made outside its key's validity window
    checkpoint_mismatch a checkpoint whose stream, range or head disagrees with the chain
    checkpoint_link     a checkpoint that does not cite the previous checkpoint
    truncated           a later stream cites a checkpoint past this stream's last frame
    citation_mismatch   a genesis cites a checkpoint that is not what the files hold
    plaintext_secret    a denylisted secret in plain text
    unsealed_tail       (warning) frames after the stream's last checkpoint
    unfinished_stream   (warning) a stream ending on a checkpoint that is not final
    cited_stream_absent (warning) a genesis cites a stream not in the files given
    checkpoint_missing  a checkpoint saved earlier (`expect`) is not in the files: the
                        trail was cut back before it (e.g. the newest stream deleted)
    checkpoint_differs  the frame at a saved checkpoint's stream and seq is not that
                        checkpoint

`expect` lists checkpoints an auditor saved earlier (`checkpoint.CheckpointRef`, from
`latest_checkpoint`, or one per stream from `refs_of_marks` with several gateway
instances): the trail must still reach each of them, frame for frame, and each finding
names the pinned stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.checkpoint import NO_CHECKPOINT, SIGNATURE_DOMAIN, CheckpointRef, read_checkpoint
from audit.errors import FrameError, SegmentError, UnknownFrameVersion
from audit.frame import GENESIS_PREV, Frame, decode_frame, frame_hash
from audit.keys import Keyring
from audit.reader import printable
from audit.record import RecordKind, kind_of
from audit.redact import Denylist, find_plaintext_secrets
from audit.segment import read_segment, segment_paths

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    file: str = ""
    frame: int | None = None  # 0-based record index in the file
    stream: str | None = None
    seq: int | None = None
    severity: str = ERROR

    def __str__(self) -> str:
        where = self.file + (f"#{self.frame}" if self.frame is not None else "")
        who = f"stream {self.stream} seq {self.seq}: " if self.stream is not None else ""
        # Messages quote what the files hold (a cited stream, a signed field): shown escaped.
        return printable(f"{where}: {self.severity}: {self.code}: {who}{self.message}")


@dataclass(frozen=True)
class _Seen:
    frame: Frame
    file: str
    index: int


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    frames: int = 0
    streams: int = 0
    checkpoints: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def ok(self, *, strict: bool = False) -> bool:
        return not (self.findings if strict else self.errors)

    def summary(self) -> str:
        return (
            f"{self.frames} frame(s) in {self.streams} stream(s), {self.checkpoints} "
            f"checkpoint(s) verified; {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )


def verify(
    paths: Iterable[Path],
    keyring: Keyring,
    denylist: Denylist | None = None,
    expect: Iterable[CheckpointRef] = (),
) -> Report:
    report = Report()
    streams: dict[str, dict[int, _Seen]] = {}
    forks: list[tuple[_Seen, _Seen]] = []
    for path in segment_paths(paths):
        _read_file(path, report, streams, forks)
    report.streams = len(streams)
    for earlier, later in forks:
        _report_fork(earlier, later, streams[later.frame.stream], report)
    cited: list[tuple[_Seen, Any]] = []
    for stream_id, frames in sorted(streams.items()):
        cited.extend(_check_stream(stream_id, frames, keyring, denylist or Denylist(), report))
    for genesis, previous in cited:
        _check_citation(genesis, previous, streams, report)
    for saved in expect:
        _check_expected(saved, streams, report)
    return report


def _check_expected(
    saved: CheckpointRef, streams: dict[str, dict[int, _Seen]], report: Report
) -> None:
    """The trail still reaches `saved`: the same frame at its stream and seq, a checkpoint."""
    # SECURITY: deleting the newest stream(s) whole leaves no hole inside any stream left;
    # only a checkpoint saved outside the trail tells that history went missing.
    frames = streams.get(saved.stream)
    seen = frames.get(saved.seq) if frames is not None else None
    if frames is None or seen is None:
        held = f"its frames here end at seq {max(frames)}" if frames else "the stream is absent"
        report.findings.append(
            Finding(
                "checkpoint_missing",
                f"the saved checkpoint {saved} is not in these files ({held}): frames "
                "were removed since it was saved",
                stream=saved.stream,
                seq=saved.seq,
            )
        )
        return
    frame = seen.frame
    recomputed = frame_hash(frame.version, frame.stream, frame.seq, frame.prev, frame.body)
    problems = []
    if recomputed != saved.h:
        problems.append(f"its h is {recomputed.hex()[:16]}…, the saved one {saved.h.hex()[:16]}…")
    try:
        is_checkpoint = kind_of(frame.decode_body()) == RecordKind.CHECKPOINT
    except FrameError:
        is_checkpoint = False
    if not is_checkpoint:
        problems.append("it is not a checkpoint")
    if problems:
        report.findings.append(
            Finding(
                "checkpoint_differs",
                f"the frame at the saved checkpoint {saved} differs: " + "; ".join(problems),
                seen.file,
                seen.index,
                saved.stream,
                saved.seq,
            )
        )


def _read_file(
    path: Path,
    report: Report,
    streams: dict[str, dict[int, _Seen]],
    forks: list[tuple[_Seen, _Seen]],
) -> None:
    name = str(path)
    last_in_file: dict[str, int] = {}
    try:
        items = list(read_segment(path))
    except SegmentError as exc:
        report.findings.append(Finding("unreadable", str(exc), name))
        return
    for item in items:
        if item.data is None:
            report.findings.append(
                Finding("decode_error", item.error or "unreadable record", name, item.index)
            )
            continue
        try:
            frame = decode_frame(item.data)
        except UnknownFrameVersion as exc:
            report.findings.append(Finding("unknown_version", str(exc), name, item.index))
            continue
        except FrameError as exc:
            report.findings.append(Finding("decode_error", str(exc), name, item.index))
            continue
        report.frames += 1
        seen = _Seen(frame, name, item.index)

        def add(code: str, message: str, seen: _Seen = seen, frame: Frame = frame) -> None:
            report.findings.append(
                Finding(code, message, seen.file, seen.index, frame.stream, frame.seq)
            )

        if not frame.hash_ok():
            add("hash_mismatch", "h does not recompute over the stored bytes")
        frames = streams.setdefault(frame.stream, {})
        earlier = frames.get(frame.seq)
        if earlier is not None:
            if earlier.frame != frame:
                forks.append((earlier, seen))  # reported once every file is read
            continue  # an identical copy (redelivered to two collectors) is harmless
        previous = last_in_file.get(frame.stream)
        if previous is not None and frame.seq < previous:
            add("out_of_order", f"comes after seq {previous} of its stream in this file")
        last_in_file[frame.stream] = max(frame.seq, previous if previous is not None else -1)
        frames[frame.seq] = seen


def _report_fork(earlier: _Seen, later: _Seen, frames: dict[int, _Seen], report: Report) -> None:
    """One seq_fork finding naming both copies, and the one the chain goes on from."""

    def recomputed(copy: _Seen) -> bytes:
        f = copy.frame
        return frame_hash(f.version, f.stream, f.seq, f.prev, f.body)

    def named(copy: _Seen) -> str:
        return f"{copy.file}#{copy.index} (h {recomputed(copy).hex()[:16]})"

    following = frames.get(later.frame.seq + 1)
    if following is None:
        chain = "no next frame here tells which copy the chain holds"
    else:
        where = f"{following.file}#{following.index}"
        linked = [c for c in (earlier, later) if recomputed(c) == following.frame.prev]
        held = f"{linked[0].file}#{linked[0].index}" if linked else "neither"
        chain = f"the next frame ({where}) follows {held}"
    report.findings.append(
        Finding(
            "seq_fork",
            f"two different frames hold this seq: {named(earlier)} and {named(later)}; {chain}",
            later.file,
            later.index,
            later.frame.stream,
            later.frame.seq,
        )
    )


def _check_stream(
    stream: str,
    frames: dict[int, _Seen],
    keyring: Keyring,
    denylist: Denylist,
    report: Report,
) -> list[tuple[_Seen, Any]]:
    """Check one stream's frames; the citations its genesis makes, to check once all are read."""

    def add(code: str, message: str, seen: _Seen | None, severity: str = ERROR) -> None:
        report.findings.append(
            Finding(
                code,
                message,
                seen.file if seen else "",
                seen.index if seen else None,
                stream,
                seen.frame.seq if seen else None,
                severity,
            )
        )

    seqs = sorted(frames)
    recomputed = {
        seq: frame_hash(s.frame.version, s.frame.stream, s.frame.seq, s.frame.prev, s.frame.body)
        for seq, s in frames.items()
    }
    citations: list[tuple[_Seen, Any]] = []
    last_cp_seq = -1
    last_cp_h = NO_CHECKPOINT
    last_cp_final = False
    if seqs[0] != 0:
        add("no_genesis", f"the stream's first frame here is seq {seqs[0]}", frames[seqs[0]])
    for before, after in itertools.pairwise(seqs):
        if after != before + 1:
            add("seq_gap", f"frames {before + 1}..{after - 1} are missing", frames[after])
    for seq in seqs:
        seen = frames[seq]
        frame = seen.frame
        if seq > 0 and seq - 1 in frames and frame.prev != recomputed[seq - 1]:
            add("prev_mismatch", "prev is not the hash of the previous frame", seen)
        try:
            body = frame.decode_body()
        except FrameError as exc:
            add("body_error", str(exc), seen)
            continue
        kind = kind_of(body)
        if seq == 0:
            if kind != RecordKind.STREAM_START or frame.prev != GENESIS_PREV:
                add("bad_genesis", "seq 0 is not a stream start with a zero prev", seen)
            previous = body.get("previous")
            if isinstance(previous, dict):
                citations.append((seen, previous))
                if isinstance(previous.get("h"), bytes):
                    last_cp_h = previous["h"]
            others = body.get("cites", [])
            if isinstance(others, list):
                citations.extend((seen, other) for other in others)
            else:
                add("bad_genesis", "the citations of other streams are not a list", seen)
            continue
        if kind == RecordKind.CHECKPOINT:
            report.checkpoints += 1
            last_cp_final = _check_checkpoint(
                seen, body, keyring, frames, recomputed, last_cp_seq, last_cp_h, add
            )
            last_cp_seq, last_cp_h = seq, recomputed[seq]
            continue
        try:
            leaks = find_plaintext_secrets(body, denylist)
        except RecursionError:
            # A body nested too deeply to scan is not a record the writer makes: reported,
            # and the rest of the report still comes out.
            add("body_error", "the body is nested too deeply to scan for secrets", seen)
            continue
        for where in leaks:
            add("plaintext_secret", f"a denylisted secret in plain text at {where}", seen)
    if seqs[-1] != last_cp_seq:
        first = last_cp_seq + 1
        add(
            "unsealed_tail",
            f"frames {first}..{seqs[-1]} are not covered by a signed checkpoint",
            frames[seqs[-1]],
            WARNING,
        )
    elif not last_cp_final:
        # SECURITY: frames cut off right after a checkpoint leave no unsealed tail; only a
        # clean shutdown's final checkpoint says that nothing came after it.
        add(
            "unfinished_stream",
            "the stream ends on a checkpoint that is not final: a live or crashed writer, "
            "or frames removed after it",
            frames[seqs[-1]],
            WARNING,
        )
    return citations


def _check_checkpoint(
    seen: _Seen,
    body: dict[str, Any],
    keyring: Keyring,
    frames: dict[int, _Seen],
    recomputed: dict[int, bytes],
    last_cp_seq: int,
    last_cp_h: bytes,
    add: Callable[..., None],
) -> bool:
    """Check one checkpoint; whether it says it is final (a forged one is an error anyway)."""
    try:
        signed = read_checkpoint(body)
    except FrameError as exc:
        add("bad_checkpoint", str(exc), seen)
        return False
    cp = signed.checkpoint
    key = keyring.get(cp.key_id)
    if key is None:
        add("unknown_key", f"key {cp.key_id!r} is not in the keyring", seen)
    elif not key.verify(signed.signature, SIGNATURE_DOMAIN + signed.signed):
        add("bad_signature", f"the signature does not verify with key {cp.key_id!r}", seen)
    elif not key.valid_at(cp.time):
        window = f"[{key.not_before}, {key.not_after if key.not_after is not None else '…'})"
        add("key_outside_window", f"made at {cp.time} outside key {cp.key_id}'s {window}", seen)
    seq = seen.frame.seq
    expected_first = max(last_cp_seq, 0)
    problems = []
    if cp.stream != seen.frame.stream:
        problems.append(f"names stream {cp.stream}")
    if cp.last_seq != seq - 1 or cp.first_seq != expected_first:
        problems.append(
            f"covers {cp.first_seq}..{cp.last_seq}, expected {expected_first}..{seq - 1}"
        )
    elif cp.last_seq in recomputed and cp.head != recomputed[cp.last_seq]:
        problems.append(f"head differs from the recomputed hash of seq {cp.last_seq}")
    if problems:
        add("checkpoint_mismatch", "; ".join(problems), seen)
    if cp.prev_checkpoint != last_cp_h:
        add("checkpoint_link", "does not cite the previous checkpoint", seen)
    return cp.final


def _check_citation(
    genesis: _Seen,
    previous: Any,
    streams: dict[str, dict[int, _Seen]],
    report: Report,
) -> None:
    def add(code: str, message: str, severity: str = ERROR) -> None:
        report.findings.append(
            Finding(code, message, genesis.file, genesis.index, genesis.frame.stream, 0, severity)
        )

    if not isinstance(previous, dict):
        add("bad_genesis", "a citation of another stream's checkpoint is not a map")
        return
    stream, seq, h = previous.get("stream"), previous.get("seq"), previous.get("h")
    if not isinstance(stream, str) or not isinstance(seq, int) or not isinstance(h, bytes):
        add("bad_genesis", "the citation of the previous checkpoint is malformed")
        return
    frames = streams.get(stream)
    if frames is None:
        add("cited_stream_absent", f"cites stream {stream} seq {seq}, not in these files", WARNING)
        return
    if seq > max(frames):
        add(
            "truncated",
            f"cites checkpoint seq {seq} of stream {stream}, whose frames here end at "
            f"seq {max(frames)}",
        )
        return
    cited = frames.get(seq)
    if cited is None or cited.frame.h != h:
        add("citation_mismatch", f"stream {stream} seq {seq} is not the checkpoint cited")
