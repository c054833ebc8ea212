"""Several gateway instances: `checkpoint --from-redis` pins the newest checkpoint of every
marked stream, and `verify --expect-checkpoint FILE` fails when any pinned stream was
deleted whole, cut back before its pin, or holds another frame there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from audit.checkpoint import (
    MAX_REF_CHARS,
    MAX_REFS,
    MAX_REFS_FILE_CHARS,
    CheckpointRef,
    parse_refs,
    read_checkpoint,
    ref_of_mark,
    refs_of_marks,
    uncited_checkpoints,
)
from audit.cli import main
from audit.errors import CheckpointRefError
from audit.frame import Frame
from audit.keys import Keyring, SigningKey
from audit.record import RecordKind, kind_of
from audit.segment import segment_paths
from audit.verify import verify
from audit.writer import AuditWriter
from gateway.clock import ManualClock
from tests.audit.chains import build_chain, read_frames, write_segment
from tests.audit.conftest import WriterFactory, collect, request_pair

MARK_KEY = "test:audit:last-checkpoint"
BY_STREAM = f"{MARK_KEY}:by-stream"
H = "ab" * 32


def _ref(n: int, seq: int = 3) -> CheckpointRef:
    return CheckpointRef(f"20261129T040000Z-{n:016x}", seq, bytes([n % 256]) * 32)


def _from_redis(redis_url: str) -> list[str]:
    """The arguments of `checkpoint --from-redis` for this Redis and these tests' marks."""
    return ["checkpoint", "--from-redis", "--redis-url", redis_url, "--checkpoint-key", MARK_KEY]


def _rewrite(seg: Path, keep: Callable[[Frame], bool]) -> None:
    """Rewrite every segment file in place with only the frames `keep` accepts: a forger
    with write access to the segment directory."""
    for path in segment_paths([seg]):
        write_segment(path, [f for f in read_frames(path) if keep(f)])


async def _requests(writer: AuditWriter, clock: ManualClock, first: int, count: int) -> None:
    for n in range(first, first + count):
        clock.advance(1)
        attempt, outcome = request_pair(n, clock.now())
        await writer.append(attempt)
        await writer.append(outcome)


@dataclass
class Trail:
    """Two live instances on one Redis (A checkpoints, then B, so B's is the newest mark),
    and what an auditor does with their trail."""

    a: AuditWriter
    b: AuditWriter
    redis: aioredis.Redis
    redis_url: str
    clock: ManualClock
    keyring: Keyring
    keyring_file: Path
    tmp_path: Path
    capsys: pytest.CaptureFixture[str]
    make_writer: WriterFactory

    @property
    def seg(self) -> Path:
        return self.tmp_path / "seg"

    async def requests(self, writer: AuditWriter, first: int, count: int) -> None:
        await _requests(writer, self.clock, first, count)

    async def collect(self) -> Path:
        """Move what the instances wrote into the segment files."""
        await collect(self.redis, self.seg)
        return self.seg

    async def pin(self) -> Path:
        """What an auditor does: save `checkpoint --from-redis` outside the trail (the
        command runs its own event loop, so in a thread here)."""
        args = _from_redis(self.redis_url)
        assert await asyncio.to_thread(main, args) == 0
        out = self.capsys.readouterr()
        assert "verify --expect-checkpoint" in out.err
        path = self.tmp_path / "pins.jsonl"
        path.write_text(out.out)
        return path

    def verify(self, pins: Path) -> int:
        """`verify --expect-checkpoint pins` over the segment files: its exit code."""
        args = ["verify", str(self.seg), "--keyring", str(self.keyring_file)]
        return main([*args, "--expect-checkpoint", str(pins)])

    def out(self) -> str:
        """What the commands printed to stdout since last asked."""
        return self.capsys.readouterr().out


@pytest.fixture
async def trail(
    make_writer: WriterFactory,
    redis: aioredis.Redis,
    redis_url: str,
    clock: ManualClock,
    keyring: Keyring,
    keyring_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Trail:
    a = await make_writer(last_checkpoint_key=MARK_KEY)
    b = await make_writer(last_checkpoint_key=MARK_KEY)
    await _requests(a, clock, 0, 2)
    await a.checkpoint()
    await _requests(b, clock, 10, 2)
    await b.checkpoint()
    assert a.stream_id != b.stream_id
    return Trail(
        a, b, redis, redis_url, clock, keyring, keyring_file, tmp_path, capsys, make_writer
    )


async def test_every_live_stream_is_pinned_and_an_intact_trail_passes(trail: Trail) -> None:
    a, b = trail.a, trail.b
    pins = await trail.pin()
    refs = parse_refs(pins.read_text())
    assert [r.stream for r in refs] == sorted([a.stream_id, b.stream_id])
    seg = await trail.collect()
    frames = {(f.stream, f.seq): f for f in read_frames(seg)}
    for ref in refs:
        pinned = frames[(ref.stream, ref.seq)]
        assert pinned.h == ref.h
        assert kind_of(pinned.decode_body()) == RecordKind.CHECKPOINT
        assert json.loads(ref.to_json())["stream"] == ref.stream
    # Both go on writing; the trail still reaches every pin.
    await trail.requests(a, 20, 2)
    await a.checkpoint()
    await trail.requests(b, 30, 1)
    await trail.collect()
    assert trail.verify(pins) == 0
    assert "0 error(s)" in trail.out()


async def test_deleting_another_instances_live_stream_whole_is_caught(trail: Trail) -> None:
    a, b = trail.a, trail.b
    pins = await trail.pin()
    newest = ref_of_mark(await trail.redis.get(MARK_KEY))  # what the one-line form pins
    assert newest.stream == b.stream_id
    await trail.requests(b, 40, 1)
    seg = await trail.collect()
    # A is not the newest mark, and no stream cites it yet: remove it whole.
    _rewrite(seg, lambda f: f.stream != a.stream_id)
    assert a.stream_id not in {f.stream for f in read_frames(seg)}
    # Without pins, or with the newest checkpoint alone (the one-line form), it looks whole.
    assert verify([seg], trail.keyring).ok()
    assert verify([seg], trail.keyring, expect=[newest]).ok()
    assert trail.verify(pins) == 1
    out = trail.out()
    assert f"error: checkpoint_missing: stream {a.stream_id} seq" in out
    assert "the stream is absent" in out
    assert "1 error(s)" in out


async def test_an_instance_stream_cut_back_before_its_pin_is_caught(trail: Trail) -> None:
    a = trail.a
    pins = await trail.pin()
    a_pin = next(r for r in parse_refs(pins.read_text()) if r.stream == a.stream_id)
    seg = await trail.collect()
    _rewrite(seg, lambda f: f.stream != a.stream_id or f.seq < a_pin.seq)
    # A cut back leaves an unsealed tail: only a warning without the pin.
    assert verify([seg], trail.keyring).ok()
    assert trail.verify(pins) == 1
    out = trail.out()
    assert f"error: checkpoint_missing: stream {a.stream_id} seq {a_pin.seq}" in out
    assert f"its frames here end at seq {a_pin.seq - 1}" in out


async def test_a_pin_that_does_not_match_the_frame_is_checkpoint_differs(trail: Trail) -> None:
    a = trail.a
    pins = await trail.pin()
    await trail.collect()
    refs = parse_refs(pins.read_text())
    forged = trail.tmp_path / "forged.jsonl"
    forged.write_text(
        "\n".join(
            str(CheckpointRef(r.stream, r.seq, bytes(32))) if r.stream == a.stream_id else str(r)
            for r in refs
        )
        + "\n"
    )
    assert trail.verify(forged) == 1
    out = trail.out()
    assert f"error: checkpoint_differs: stream {a.stream_id} seq" in out
    assert "1 error(s)" in out


async def test_a_stream_cited_by_a_newer_one_leaves_the_marks_and_stays_pinned(
    trail: Trail,
) -> None:
    """A third instance's genesis cites A and B, and its first checkpoint removes their
    marks; their next checkpoints mark them again, so the pins follow every live stream."""
    a, b = trail.a, trail.b
    marked = sorted([a.stream_id.encode(), b.stream_id.encode()])
    c = await trail.make_writer(last_checkpoint_key=MARK_KEY)
    # Until C has a checkpoint nothing pinned reaches its genesis: the marks stay.
    assert sorted(await trail.redis.hkeys(BY_STREAM)) == marked
    await trail.requests(a, 50, 1)
    await a.checkpoint()
    await trail.requests(c, 60, 1)
    await c.checkpoint()
    refs = parse_refs((await trail.pin()).read_text())
    assert {r.stream for r in refs} == {a.stream_id, c.stream_id}
    assert b.stream_id not in {r.stream for r in refs}  # cited by C's genesis meanwhile


async def test_checkpoint_from_redis_reads_consistently_while_instances_write(trail: Trail) -> None:
    a, b = trail.a, trail.b
    args = _from_redis(trail.redis_url)
    stop = asyncio.Event()

    async def write() -> None:
        n = 100
        while not stop.is_set():
            for writer in (a, b):
                await _requests(writer, trail.clock, n, 1)
                await writer.checkpoint()
                n += 1

    writing = asyncio.create_task(write())
    codes = []
    try:
        for _ in range(5):
            codes.append(await asyncio.to_thread(main, args))
    finally:
        stop.set()
        await writing
    assert codes == [0] * 5
    outputs = trail.capsys.readouterr().out.splitlines()
    seg = await trail.collect()
    frames = {(f.stream, f.seq): f for f in read_frames(seg)}
    for line in outputs:
        ref = CheckpointRef.parse(line)
        frame = frames[(ref.stream, ref.seq)]
        assert frame.h == ref.h
        assert read_checkpoint(frame.decode_body()).checkpoint.stream == ref.stream


def test_hostile_marks_in_redis_are_refused_and_nothing_is_printed(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _from_redis(redis_url)
    good = _ref(1)
    mark = msgpack.packb({"stream": good.stream, "seq": good.seq, "h": good.h})
    client = sync_redis.Redis.from_url(redis_url)
    try:
        client.delete(BY_STREAM, MARK_KEY)  # this test's Redis is not flushed for it
        client.hset(BY_STREAM, good.stream, mark)
        assert main(args) == 0  # no newest mark, one stream marked
        assert CheckpointRef.parse(capsys.readouterr().out) == good
        for field, raw, fault in [
            (good.stream, b"\xc1", "does not decode"),
            (_ref(2).stream, mark, "names stream"),
            ("../x", mark, "names stream"),
            (good.stream, msgpack.packb({"stream": good.stream, "seq": 1, "h": b"x"}), "32 bytes"),
        ]:
            client.delete(BY_STREAM)
            client.hset(BY_STREAM, field, raw)
            assert main(args) == 1
            out = capsys.readouterr()
            assert fault in out.err
            assert out.out == ""
        client.delete(BY_STREAM)
        client.hset(BY_STREAM, mapping={_ref(n).stream: b"x" for n in range(MAX_REFS + 1)})
        assert main(args) == 1
        out = capsys.readouterr()
        assert f"more than {MAX_REFS} streams are marked" in out.err
        assert out.out == ""
    finally:
        client.delete(BY_STREAM, MARK_KEY)
        client.close()


def test_marks_merge_to_the_newest_per_stream() -> None:
    old, new = _ref(1, seq=3), CheckpointRef(_ref(1).stream, 9, bytes(32))
    other = _ref(2)

    def packed(ref: CheckpointRef) -> bytes:
        data: bytes = msgpack.packb({"stream": ref.stream, "seq": ref.seq, "h": ref.h})
        return data

    marks: dict[object, object] = {
        old.stream.encode(): packed(old),
        other.stream.encode(): packed(other),
    }
    assert refs_of_marks(packed(new), marks) == [new, other]
    assert refs_of_marks(None, marks) == [old, other]
    clash = CheckpointRef(old.stream, old.seq, bytes(32))
    with pytest.raises(CheckpointRefError, match="another h for stream"):
        refs_of_marks(packed(clash), marks)
    with pytest.raises(CheckpointRefError, match="no checkpoint is marked"):
        refs_of_marks(None, {})


def test_a_saved_file_of_several_lines_round_trips() -> None:
    refs = [_ref(n) for n in range(MAX_REFS)]
    text = "# saved at the audit of 2026-11-29\n\n" + "\n".join(
        r.to_json() if n % 2 else str(r) for n, r in enumerate(refs)
    )
    assert parse_refs(text) == refs
    assert parse_refs(str(refs[0])) == [refs[0]]  # the one-line form
    assert parse_refs(refs[0].to_json() + "\r\n") == [refs[0]]


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "no checkpoint reference"),
        ("\n# only a comment\n\n", "no checkpoint reference"),
        (f"{_ref(1)}\nnonsense\n", "line 2: checkpoint reference 'nonsense'"),
        (
            f"{_ref(1)}\n{_ref(2)}\n{_ref(1)}",
            "line 3: stream .* is named again \\(first on line 1\\)",
        ),
        (f"{_ref(1)}\n{_ref(1, seq=9)}", "line 2: stream .* is named again"),
        ("\n".join(str(_ref(n)) for n in range(MAX_REFS + 1)), f"more than {MAX_REFS}"),
        (f"{_ref(1)}\n" + "x" * (MAX_REF_CHARS + 1), "line 2: a checkpoint reference is at most"),
        (f"{_ref(1)}\n" + "{" * 900, "line 2: checkpoint reference: not JSON"),
        (f"{_ref(1)}\x00\n", "line 1: checkpoint reference: h is not 64 hex"),
        (f"{_ref(1)}\n" + " " * MAX_REFS_FILE_CHARS, "at most"),
        (f"s:1:{H}\u2028s:2:{H}", "line 2: stream s is named again"),
    ],
)
def test_a_hostile_saved_file_is_refused_clearly(text: str, fault: str) -> None:
    with pytest.raises(CheckpointRefError, match=fault):
        parse_refs(text)


async def test_verify_refuses_a_hostile_pin_file_and_checks_nothing(trail: Trail) -> None:
    await trail.collect()
    many = trail.tmp_path / "many.jsonl"
    many.write_text("\n".join(str(_ref(n)) for n in range(2000)))
    assert trail.verify(many) == 2
    err = trail.capsys.readouterr()
    assert f"{many}: line {MAX_REFS + 1}: more than {MAX_REFS}" in err.err
    assert err.out == ""
    huge = trail.tmp_path / "huge.jsonl"
    huge.write_text(" " * (8 * MAX_REFS_FILE_CHARS))
    assert trail.verify(huge) == 2
    assert f"{huge}: a saved checkpoint file is at most" in trail.capsys.readouterr().err
    twice = trail.tmp_path / "twice.jsonl"
    twice.write_text(f"{_ref(1)}\n{_ref(1)}\n")
    assert trail.verify(twice) == 2
    assert "line 2: stream" in trail.capsys.readouterr().err


async def test_every_stream_from_the_files_pins_what_no_genesis_cites(trail: Trail) -> None:
    a, b = trail.a, trail.b
    seg = await trail.collect()
    args = ["checkpoint", str(seg), "--every-stream"]
    assert main(args) == 0
    out = trail.capsys.readouterr()
    assert "verify --expect-checkpoint" in out.err
    refs = parse_refs(out.out)
    assert [r.stream for r in refs] == sorted([a.stream_id, b.stream_id])
    assert ref_of_mark(await trail.redis.get(MARK_KEY)) in refs  # B's, the newest of all
    # C's genesis cites A's and B's newest checkpoints: they are pinned by it, not listed,
    # until A checkpoints again.
    c = await trail.make_writer(last_checkpoint_key=MARK_KEY)
    await trail.requests(c, 70, 1)
    await c.checkpoint()
    await trail.requests(a, 80, 1)
    await a.checkpoint()
    await trail.collect()
    assert main(args) == 0
    pins = trail.tmp_path / "pins.jsonl"
    pins.write_text(trail.capsys.readouterr().out)
    assert {r.stream for r in parse_refs(pins.read_text())} == {a.stream_id, c.stream_id}
    assert trail.verify(pins) == 0
    trail.capsys.readouterr()
    _rewrite(seg, lambda f: f.stream != a.stream_id)
    assert trail.verify(pins) == 1
    assert f"error: checkpoint_missing: stream {a.stream_id}" in trail.out()


def test_every_stream_without_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = write_segment(tmp_path / "empty.seg", [])
    assert main(["checkpoint", str(empty), "--every-stream"]) == 1
    out = capsys.readouterr()
    assert "no checkpoint in these files" in out.err
    assert out.out == ""


def test_a_citation_from_a_stream_with_no_checkpoint_pins_nothing(
    signer: SigningKey, tmp_path: Path
) -> None:
    old = build_chain(_ref(1).stream, [{"record": "x"}], signer, 1.0)
    old_cp = {"stream": old[-1].stream, "seq": old[-1].seq, "h": old[-1].h}
    newest = build_chain(_ref(3).stream, [], signer, 3.0)
    # A live stream that cites the old one and has no checkpoint yet: deleted whole, it
    # takes the citation along, so the old stream must stay listed.
    citing = build_chain(_ref(2).stream, [], signer, 2.0, previous=old_cp)
    seg = write_segment(tmp_path / "live.seg", [*old, *citing[:-1], *newest])
    assert [r.stream for r in uncited_checkpoints([seg])] == [_ref(1).stream, _ref(3).stream]
    sealed = write_segment(tmp_path / "sealed.seg", [*old, *citing, *newest])
    assert [r.stream for r in uncited_checkpoints([sealed])] == [_ref(2).stream, _ref(3).stream]
