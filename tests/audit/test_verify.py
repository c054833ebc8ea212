"""The tamper suite: every kind of tampering is found, with the right finding and frame."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from audit.checkpoint import Checkpoint
from audit.frame import Frame, encode_body
from audit.keys import Keyring, PublicKey, SigningKey
from audit.verify import Report, verify
from gateway.clock import ManualClock
from tests.audit.chains import build_chain, read_frames, rechain, with_body, write_segment
from tests.audit.conftest import WriterFactory, collect, request_pair, write_session


@pytest.fixture
async def written(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, tmp_path: Path
) -> list[Frame]:
    """One closed stream of a real session, through the real writer and collector."""
    writer = await make_writer(checkpoint_every_frames=4)
    await write_session(writer, clock, requests=5)
    await writer.close()
    await collect(redis, tmp_path / "collected")
    frames = read_frames(tmp_path / "collected")
    assert len(frames) > 12
    return frames


def check(tmp_path: Path, frames: Sequence[Frame | bytes], keyring: Keyring) -> Report:
    return verify([write_segment(tmp_path / "tampered.seg", frames)], keyring)


def codes_at(report: Report, code: str) -> list[tuple[int | None, int | None]]:
    return [(f.seq, f.frame) for f in report.findings if f.code == code]


def test_an_untouched_trail_verifies_clean(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    report = verify([tmp_path / "collected"], keyring)
    assert report.findings == []
    assert report.ok(strict=True)
    assert report.checkpoints >= 3
    assert report.frames == len(written)


def test_flipped_byte_in_a_body_is_a_hash_mismatch(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    target = written[6]
    assert b"invoices" in target.body
    written[6] = with_body(target, target.body.replace(b"invoices", b"invoicez", 1))
    report = check(tmp_path, list(written), keyring)
    assert codes_at(report, "hash_mismatch") == [(6, 6)]
    assert not report.ok()


def test_rewritten_history_with_recomputed_hashes_breaks_the_signed_head(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    target = written[2]
    written[2] = with_body(target, target.body.replace(b"invoices", b"invoicez", 1))
    report = check(tmp_path, list(rechain(written, 2)), keyring)
    assert "hash_mismatch" not in report.codes()
    assert "checkpoint_mismatch" in report.codes()
    assert not report.ok()


def test_deleted_frame_is_a_seq_gap(tmp_path: Path, written: list[Frame], keyring: Keyring) -> None:
    del written[6]
    report = check(tmp_path, list(written), keyring)
    assert [f.seq for f in report.findings if f.code == "seq_gap"] == [7]
    assert "frames 6..6 are missing" in str(report.errors[0])


def test_swapped_frames_are_out_of_order(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    written[6], written[7] = written[7], written[6]
    report = check(tmp_path, list(written), keyring)
    assert codes_at(report, "out_of_order") == [(6, 7)]
    assert not report.ok()


def test_truncated_tail_is_unsealed(tmp_path: Path, written: list[Frame], keyring: Keyring) -> None:
    report = check(tmp_path, list(written[:-3]), keyring)
    assert [f.code for f in report.findings] == ["unsealed_tail"]
    assert report.ok() is True  # a crashed writer looks the same ...
    assert report.ok(strict=True) is False  # ... so --strict fails it


def test_tail_cut_exactly_at_a_checkpoint_fails_strict(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    # The closed stream ends with its final checkpoint; cut it back to an earlier one.
    cut = max(i for i, f in enumerate(written[:-1]) if b"checkpoint" in f.body and f.seq > 0)
    report = check(tmp_path, list(written[: cut + 1]), keyring)
    assert [f.code for f in report.findings] == ["unfinished_stream"]
    assert report.findings[0].seq == cut
    assert report.ok() is True  # a crashed or live writer looks the same ...
    assert report.ok(strict=True) is False  # ... so --strict fails it, as documented


async def test_truncated_stream_cited_by_the_next_one_is_an_error(
    tmp_path: Path,
    redis: aioredis.Redis,
    make_writer: WriterFactory,
    written: list[Frame],
    keyring: Keyring,
) -> None:
    second = await make_writer()
    await second.close()
    await collect(redis, tmp_path / "collected")
    frames = read_frames(tmp_path / "collected")
    first_stream = frames[0].stream
    kept = [f for f in frames if not (f.stream == first_stream and f.seq >= len(written) - 2)]
    report = check(tmp_path, list(kept), keyring)
    assert "truncated" in report.codes()
    assert not report.ok()


def test_spliced_frames_from_another_stream(
    tmp_path: Path, written: list[Frame], keyring: Keyring, signer: SigningKey
) -> None:
    other = build_chain(
        "20261129T000000Z-0000000000000bad", [request_pair(9, 1.0)[0]] * 4, signer, 1.0
    )
    spliced = [*written[:5], *other[2:4], *written[5:]]
    report = check(tmp_path, list(spliced), keyring)
    assert "no_genesis" in report.codes()
    relabelled = [
        Frame(f.version, written[0].stream, written[5].seq + i, f.prev, f.body, f.h)
        for i, f in enumerate(other[2:4])
    ]
    report = check(tmp_path, [*written[:5], *relabelled, *written[5:]], keyring)
    assert {"hash_mismatch", "seq_fork"} <= report.codes()


def test_forked_seq_with_a_valid_hash(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    original = written[4]
    fork = Frame.seal(original.stream, original.seq, original.prev, encode_body({"record": "x"}))
    report = check(tmp_path, [*written, fork], keyring)
    assert codes_at(report, "seq_fork") == [(4, len(written))]


def test_checkpoint_forged_with_another_key(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    forger = SigningKey.generate("k1")  # claims the real key's id
    index = next(i for i, f in enumerate(written) if b"checkpoint" in f.body)
    head = written[index - 1]
    cp = Checkpoint(head.stream, 0, head.seq, head.h, 1.8e9, "k1", bytes(32))
    written[index] = Frame.seal(head.stream, index, head.h, encode_body(cp.body(forger)))
    report = check(tmp_path, rechain(written, index), keyring)
    assert codes_at(report, "bad_signature") == [(index, index)]

    stranger = SigningKey.generate("evil")
    cp = Checkpoint(head.stream, 0, head.seq, head.h, 1.8e9, "evil", bytes(32))
    written[index] = Frame.seal(head.stream, index, head.h, encode_body(cp.body(stranger)))
    report = check(tmp_path, rechain(written, index), keyring)
    assert codes_at(report, "unknown_key") == [(index, index)]


def test_checkpoint_outside_the_keys_window(
    tmp_path: Path, written: list[Frame], signer: SigningKey, clock: ManualClock
) -> None:
    retired = Keyring((PublicKey(signer.key_id, signer.public_bytes(), 0.0, clock.now() - 60),))
    report = check(tmp_path, list(written), retired)
    assert report.findings
    assert {f.code for f in report.findings} == {"key_outside_window"}


def test_plaintext_secret_in_a_validly_chained_record(
    tmp_path: Path, keyring: Keyring, signer: SigningKey
) -> None:
    leaky = {
        "record": "http.attempt",
        "http": {"request": {"headers": [["Authorization", "Bearer abcdefghijkl"]]}},
        "url": {"query": "a=1&api_key=zzz"},
        "gateway": {"details": {"new_password": "hunter2"}},
    }
    frames = build_chain("20261129T000000Z-00000000000000aa", [leaky], signer, 1.0)
    report = check(tmp_path, list(frames), keyring)
    places = sorted(f.message.rsplit(" at ", 1)[1] for f in report.findings)
    assert {f.code for f in report.findings} == {"plaintext_secret"}
    assert places == [
        "gateway.details.new_password",
        "http.request.headers",
        "http.request.headers.authorization",
        "url.query:api_key",
    ]


def test_garbage_and_unknown_versions_are_reported_not_crashed_on(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    future = Frame(99, written[3].stream, 3, written[3].prev, written[3].body, written[3].h)
    frames: list[Frame | bytes] = [*written[:3], future.encode(), *written[4:]]
    report = check(tmp_path, frames, keyring)
    assert codes_at(report, "unknown_version") == [(None, 3)]
    report = check(tmp_path, [*written[:3], b"\xc1garbage", *written[3:]], keyring)
    assert codes_at(report, "decode_error") == [(None, 3)]
    path = tmp_path / "partial.seg"
    write_segment(path, written)
    path.write_bytes(path.read_bytes()[:-7])
    report = verify([path], keyring)
    assert codes_at(report, "decode_error") == [(None, len(written) - 1)]


def test_a_file_that_is_not_a_segment(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "x.seg"
    path.write_bytes(b"hello")
    report = verify([path], keyring)
    assert [f.code for f in report.findings] == ["unreadable"]


def test_a_body_nested_too_deeply_is_reported_not_crashed_on(
    tmp_path: Path, written: list[Frame], keyring: Keyring
) -> None:
    deep: dict[str, Any] = {"record": "gateway"}
    inner = deep
    for _ in range(1000):  # within what msgpack decodes, beyond what a recursive walk can
        inner["a"] = inner = {}
    index = 3
    written[index] = Frame.seal(
        written[index].stream, index, written[index - 1].h, msgpack.packb(deep)
    )
    report = check(tmp_path, rechain(written, index), keyring)
    assert codes_at(report, "body_error") == [(index, index)]
    assert "checkpoint_mismatch" in report.codes()  # the rest of the report still comes out
