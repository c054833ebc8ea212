"""Forks in the Redis stream: a frame for an already-stored (stream, seq) with other bytes is
stored too, logged loudly, and verify names both copies and the one the chain follows."""

from __future__ import annotations

import io
from pathlib import Path

import redis.asyncio as aioredis

from audit.collector import DIGESTS_PER_SEQ, Collector
from audit.frame import Frame, encode_body
from audit.keys import Keyring
from audit.verify import verify
from audit.writer import FRAME_FIELD
from tests.audit.chains import read_frames
from tests.audit.conftest import STREAM, SessionWriter


def _collector(
    redis: aioredis.Redis, segment_dir: Path, log: io.StringIO, digests_kept: int = 65_536
) -> Collector:
    return Collector(
        redis,
        stream=STREAM,
        segment_dir=segment_dir,
        consumer="c1",
        now=lambda: 0.0,
        block_ms=10,
        log=log,
        digests_kept=digests_kept,
    )


def _forged(genuine: Frame) -> Frame:
    """Another frame for the same (stream, seq), chained onto the same `prev`."""
    return Frame.seal(genuine.stream, genuine.seq, genuine.prev, encode_body({"record": "x"}))


def _copies(segment_dir: Path, frame: Frame) -> list[bytes]:
    return [
        f.body for f in read_frames(segment_dir) if (f.stream, f.seq) == (frame.stream, frame.seq)
    ]


async def test_a_fork_arriving_after_the_genuine_frame_is_stored_and_reported(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    written = await write_closed_session(3)
    log = io.StringIO()
    collector = _collector(redis, tmp_path / "seg", log)
    assert await collector.run_once() == len(written)
    forged = _forged(written[4])
    await redis.xadd(STREAM, {FRAME_FIELD: forged.encode()})
    await redis.xadd(STREAM, {FRAME_FIELD: written[5].encode()})  # a plain redelivery

    assert await collector.run_once() == 1
    assert collector.forks == 1
    assert collector.skipped == 1
    assert _copies(tmp_path / "seg", forged) == [written[4].body, forged.body]
    text = log.getvalue()
    assert "error: entry" in text
    assert f"FORK: stream {forged.stream} seq {forged.seq} arrived with other bytes" in text

    report = verify([tmp_path / "seg"], keyring)
    forks = [f for f in report.findings if f.code == "seq_fork"]
    assert len(forks) == 1
    message = str(forks[0])
    files = sorted((tmp_path / "seg").glob("*.seg"))
    assert len(files) == 2
    assert f"{files[0]}#4 (h {written[4].h.hex()[:16]})" in message
    assert f"{files[1]}#0 (h {forged.h.hex()[:16]})" in message
    assert f"the next frame ({files[0]}#5) follows {files[0]}#4" in message
    assert not report.ok()


async def test_a_fork_arriving_before_the_genuine_frame_costs_neither(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    # The forged copy is injected first and both are collected in one batch: the genuine
    # one must not be dropped as "already stored".
    written = await write_closed_session(2)
    await redis.delete(STREAM)
    forged = _forged(written[3])
    for frame in [*written[:3], forged, *written[3:]]:
        await redis.xadd(STREAM, {FRAME_FIELD: frame.encode()})
    log = io.StringIO()
    collector = _collector(redis, tmp_path / "seg", log)
    assert await collector.run_once() == len(written) + 1
    assert collector.forks == 1
    assert _copies(tmp_path / "seg", forged) == [forged.body, written[3].body]
    report = verify([tmp_path / "seg"], keyring)
    forks = [str(f) for f in report.findings if f.code == "seq_fork"]
    assert len(forks) == 1
    segment = next((tmp_path / "seg").glob("*.seg"))
    assert f"the next frame ({segment}#5) follows {segment}#4" in forks[0]
    # The chain is checked through the copy read first (the forged one) and breaks there.
    assert "prev_mismatch" in report.codes()


async def test_a_stored_seq_whose_digest_is_forgotten_is_stored_again(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path, keyring: Keyring
) -> None:
    written = await write_closed_session(3)
    log = io.StringIO()
    collector = _collector(redis, tmp_path / "seg", log, digests_kept=2)
    assert await collector.run_once() == len(written)
    forged = _forged(written[1])
    await redis.xadd(STREAM, {FRAME_FIELD: written[2].encode()})  # identical, but forgotten
    await redis.xadd(STREAM, {FRAME_FIELD: forged.encode()})
    assert await collector.run_once() == 2
    assert collector.forks == 0  # nothing left to compare with: not called a fork here
    assert "digest is no longer remembered: stored again" in log.getvalue()
    assert _copies(tmp_path / "seg", forged) == [written[1].body, forged.body]
    assert len(_copies(tmp_path / "seg", written[2])) == 2
    report = verify([tmp_path / "seg"], keyring)
    assert [f.seq for f in report.findings if f.code == "seq_fork"] == [forged.seq]


async def test_a_restarted_collector_remembers_digests_from_disk(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path
) -> None:
    written = await write_closed_session(2)
    assert await _collector(redis, tmp_path / "seg", io.StringIO()).run_once() == len(written)
    await redis.xadd(STREAM, {FRAME_FIELD: written[2].encode()})
    await redis.xadd(STREAM, {FRAME_FIELD: _forged(written[3]).encode()})
    log = io.StringIO()
    restarted = _collector(redis, tmp_path / "seg", log)
    assert await restarted.run_once() == 1
    assert (restarted.skipped, restarted.forks) == (1, 1)
    assert "FORK" in log.getvalue()


async def test_a_flood_of_forks_of_one_seq_is_all_stored_at_a_bounded_cost(
    redis: aioredis.Redis, write_closed_session: SessionWriter, tmp_path: Path
) -> None:
    # Hostile copies of one seq are each stored and reported, but what the collector keeps
    # (and logs) about that seq stays bounded: it must not slow down as the copies pile up.
    written = await write_closed_session(1)
    log = io.StringIO()
    collector = _collector(redis, tmp_path / "seg", log)
    assert await collector.run_once() == len(written)
    target = written[2]
    forks = 3 * DIGESTS_PER_SEQ
    for n in range(forks):
        body = encode_body({"record": "x", "n": n})
        copy = Frame.seal(target.stream, target.seq, target.prev, body)
        await redis.xadd(STREAM, {FRAME_FIELD: copy.encode()})
    assert await collector.run_once() == forks
    assert collector.forks == forks
    assert len(_copies(tmp_path / "seg", target)) == forks + 1
    fork_lines = [line for line in log.getvalue().splitlines() if "FORK" in line]
    assert len(fork_lines) == forks
    named = fork_lines[-1].split("than the frame already stored (sha256 ")[1].split(")")[0]
    assert len(named.split(", ")) == DIGESTS_PER_SEQ
