"""Saved checkpoints: `checkpoint` prints the newest one, `verify --expect-checkpoint` fails
when the trail no longer reaches it (the newest stream deleted whole, or cut back)."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from audit.checkpoint import MAX_REF_CHARS, CheckpointRef, latest_checkpoint
from audit.cli import main
from audit.errors import CheckpointRefError
from audit.frame import Frame
from audit.keys import Keyring
from audit.verify import verify
from tests.audit.chains import read_frames, with_body, write_segment
from tests.audit.conftest import SessionWriter, collect

H = "ab" * 32


@pytest.fixture
async def two_streams(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path
) -> list[Frame]:
    """Two closed streams, the second citing the first's last checkpoint, collected."""
    await write_closed_session(2, checkpoint_every_frames=3)
    await write_closed_session(2, checkpoint_every_frames=3)
    await collect(redis, tmp_path / "seg")
    frames = read_frames(tmp_path / "seg")
    assert len({f.stream for f in frames}) == 2
    return frames


def _saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, object]]:
    assert main(["checkpoint", str(tmp_path / "seg")]) == 0
    out = capsys.readouterr()
    assert "verify --expect-checkpoint" in out.err
    path = tmp_path / "saved.json"
    path.write_text(out.out)
    return path, json.loads(out.out)


def test_checkpoint_prints_the_newest_final_checkpoint(
    two_streams: list[Frame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _path, saved = _saved(tmp_path, capsys)
    last = two_streams[-1]  # the second stream's final checkpoint
    assert saved["stream"] == last.stream
    assert saved["seq"] == last.seq
    assert saved["h"] == last.h.hex()
    assert str(saved["time"]).endswith("Z")
    assert latest_checkpoint([tmp_path / "seg"]) == CheckpointRef.parse(json.dumps(saved))


def test_the_saved_checkpoint_is_reached(
    two_streams: list[Frame],
    tmp_path: Path,
    keyring_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, saved = _saved(tmp_path, capsys)
    seg = str(tmp_path / "seg")
    assert (
        main(["verify", seg, "--keyring", str(keyring_file), "--expect-checkpoint", str(path)]) == 0
    )
    value = f"{saved['stream']}:{saved['seq']}:{saved['h']}"
    assert main(["verify", seg, "--keyring", str(keyring_file), "--expect-checkpoint", value]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_deleting_the_newest_stream_is_caught_only_with_a_saved_checkpoint(
    two_streams: list[Frame],
    tmp_path: Path,
    keyring_file: Path,
    keyring: Keyring,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, saved = _saved(tmp_path, capsys)
    first = [f for f in two_streams if f.stream == two_streams[0].stream]
    cut = write_segment(tmp_path / "cut.seg", first)
    # Without the saved checkpoint the shortened trail looks whole.
    assert verify([cut], keyring).ok(strict=True)
    args = ["verify", str(cut), "--keyring", str(keyring_file), "--expect-checkpoint", str(path)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"error: checkpoint_missing: stream {saved['stream']} seq {saved['seq']}" in out
    assert "the stream is absent" in out


def test_a_stream_cut_back_or_rewritten_before_the_saved_checkpoint(
    two_streams: list[Frame], tmp_path: Path, keyring: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    _path, saved = _saved(tmp_path, capsys)
    ref = CheckpointRef.parse(json.dumps(saved))
    cut = write_segment(tmp_path / "cut.seg", two_streams[:-1])
    report = verify([cut], keyring, expect=[ref])
    missing = [str(f) for f in report.findings if f.code == "checkpoint_missing"]
    assert len(missing) == 1
    assert f"its frames here end at seq {ref.seq - 1}" in missing[0]

    last = two_streams[-1]
    rewritten = [
        *two_streams[:-1],
        with_body(last, last.body.replace(b"checkpoint", b"xheckpoint")),
    ]
    report = verify([write_segment(tmp_path / "rw.seg", rewritten)], keyring, expect=[ref])
    differs = [str(f) for f in report.findings if f.code == "checkpoint_differs"]
    assert len(differs) == 1
    assert "its h is" in differs[0]
    assert "it is not a checkpoint" in differs[0]
    # A saved reference to a frame that is not a checkpoint.
    plain = two_streams[1]
    report = verify(
        [tmp_path / "seg"], keyring, expect=[CheckpointRef(plain.stream, plain.seq, plain.h)]
    )
    assert [f.code for f in report.findings] == ["checkpoint_differs"]


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "expected STREAM:SEQ:H"),
        ("s:1", "expected STREAM:SEQ:H"),
        (f"s:1:{H}:x", "expected STREAM:SEQ:H"),
        (f"s/../x:1:{H}", "bad stream id"),
        (f"s:-1:{H}", "bad seq"),
        (f"s:1e3:{H}", "bad seq"),
        (f"s:{1 << 63}:{H}", "bad seq"),
        ("s:1:abcd", "not 64 hex digits"),
        (f"s:1:{'zz' * 32}", "not 64 hex digits"),
        ("x" * (MAX_REF_CHARS + 1), "at most"),
        ("{" * 900, "not JSON"),
        ("[" * 400 + "]" * 400, "expected STREAM:SEQ:H"),
        ('{"stream": "s", "seq": 1}', "expected {"),
        (f'{{"stream": "s", "seq": true, "h": "{H}"}}', "not an integer"),
        (f'{{"stream": "s", "seq": "1", "h": "{H}"}}', "not an integer"),
        (f'{{"stream": 7, "seq": 1, "h": "{H}"}}', "bad stream id"),
        ('{"stream": "s", "seq": 1, "h": 5}', "not 64 hex digits"),
        (f'["s", 1, "{H}"]', "expected STREAM:SEQ:H"),
    ],
)
def test_a_malformed_reference_is_refused_clearly(text: str, fault: str) -> None:
    with pytest.raises(CheckpointRefError, match=fault.replace("{", r"\{")):
        CheckpointRef.parse(text)


def test_reference_forms_round_trip() -> None:
    ref = CheckpointRef.parse(f" s-1:41:{H.upper()}\n")
    assert ref == CheckpointRef("s-1", 41, bytes.fromhex(H))
    assert CheckpointRef.parse(str(ref)) == ref
    assert CheckpointRef.parse(ref.to_json()) == ref
    deep = '{"stream": "s-1", "seq": 41, "h": "' + H + '", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(CheckpointRefError):
        CheckpointRef.parse(deep)  # over the size cap before any parsing


def test_verify_refuses_a_bad_expect_checkpoint(
    two_streams: list[Frame],
    tmp_path: Path,
    keyring_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seg = str(tmp_path / "seg")
    base = ["verify", seg, "--keyring", str(keyring_file), "--expect-checkpoint"]
    assert main([*base, "nonsense"]) == 2
    assert "verify: --expect-checkpoint: checkpoint reference 'nonsense'" in capsys.readouterr().err
    big = tmp_path / "big.json"
    big.write_text(" " * (MAX_REF_CHARS + 1) + f"s:1:{H}")
    assert main([*base, str(big)]) == 2
    assert f"{big}: line 1: a checkpoint reference is at most" in capsys.readouterr().err
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main([*base, str(binary)]) == 2
    assert f"{binary}: cannot read" in capsys.readouterr().err
    # A value too long to name a file is refused as a value, not by a crash.
    assert main([*base, "x" * 5000]) == 2
    assert "verify: --expect-checkpoint: a checkpoint reference is at most" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("command", [["checkpoint"], ["replay"], ["verify", "--keyring", "k"]])
def test_a_path_too_long_for_the_system_is_a_missing_file(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "p" * 5000]) == 2
    assert "no such file: ppp" in capsys.readouterr().err


def test_checkpoint_without_any(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write_segment(tmp_path / "empty.seg", [])
    assert main(["checkpoint", str(empty)]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["checkpoint", str(tmp_path / "absent")]) == 2


MARK_KEY = "test:audit:last-checkpoint"


@pytest.fixture
async def marked(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path
) -> list[Frame]:
    """Two closed streams whose writers mark their checkpoints under MARK_KEY, collected."""
    await write_closed_session(1, last_checkpoint_key=MARK_KEY)
    await write_closed_session(1, last_checkpoint_key=MARK_KEY)
    await collect(redis, tmp_path / "seg")
    return read_frames(tmp_path / "seg")


def test_checkpoint_from_redis_is_the_writers_mark(
    marked: list[Frame], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["checkpoint", "--from-redis", "--redis-url", redis_url, "--checkpoint-key", MARK_KEY]
    assert main(args) == 0
    from_redis = CheckpointRef.parse(capsys.readouterr().out)
    assert from_redis == CheckpointRef(marked[-1].stream, marked[-1].seq, marked[-1].h)
    assert from_redis == latest_checkpoint([tmp_path / "seg"])

    client = sync_redis.Redis.from_url(redis_url)
    try:
        for raw, fault in [
            (b"\xc1", "does not decode"),
            (msgpack.packb([1, 2]), "not a map"),
            (msgpack.packb({"stream": "s", "seq": 1, "h": b"x"}), "h is not 32 bytes"),
            (msgpack.packb({"stream": "../x", "seq": 1, "h": bytes(32)}), "bad stream id"),
            (msgpack.packb({"stream": "s", "seq": -1, "h": bytes(32)}), "bad seq"),
            (b"\x00" * (MAX_REF_CHARS + 1), "over"),
        ]:
            client.set(MARK_KEY, raw)
            assert main(args) == 1
            assert fault in capsys.readouterr().err
        client.delete(MARK_KEY, f"{MARK_KEY}:by-stream")
        assert main(args) == 1
        assert "no checkpoint is marked" in capsys.readouterr().err
    finally:
        client.close()
    assert main(["checkpoint"]) == 2
    assert "--from-redis" in capsys.readouterr().err
