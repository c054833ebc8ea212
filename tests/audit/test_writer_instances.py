"""Several gateway instances writing one Redis stream: every stream's last checkpoint is
cited by a later stream, whichever instance starts it, so that cutting an instance's stream
back is caught by verify as it is with one instance."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from audit.checkpoint import read_checkpoint
from audit.errors import AuditUnavailable
from audit.keys import Keyring, SigningKey
from audit.record import RecordKind, kind_of
from audit.verify import verify
from audit.writer import MAX_CITED, AuditWriter
from gateway import keys
from gateway.clock import ManualClock
from tests.audit.chains import build_chain, read_frames, write_segment
from tests.audit.conftest import STREAM, collect, request_pair, stream_frames

STREAM_B = "20261129T040000Z-00000000000000b1"
STREAM_C = "20261129T040001Z-00000000000000c1"
STREAM_D = "20261129T040002Z-00000000000000d1"
MARKS_KEY = f"{STREAM}:last-checkpoint:by-stream"  # kept by the writers of `writer_on`


def writer_on(redis: aioredis.Redis, signer: SigningKey, clock: ManualClock) -> AuditWriter:
    """One gateway instance's writer, with its own Redis client's view of the shared keys."""
    return AuditWriter(
        redis,
        signer,
        stream=STREAM,
        now=clock.now,
        checkpoint_every_frames=1000,
        checkpoint_every_s=3600.0,
        last_checkpoint_key=f"{STREAM}:last-checkpoint",
    )


async def started(writer: AuditWriter, clock: ManualClock) -> AuditWriter:
    """Open `writer` and append one record after its genesis."""
    await writer.open()
    await writer.append(request_pair(0, clock.now())[0])
    return writer


async def started_over(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock, marks: dict[Any, Any]
) -> tuple[AuditWriter, dict[str, Any]]:
    """A first instance starting over these marks in Redis: its open writer and its
    genesis's body."""
    await redis.hset(MARKS_KEY, mapping=marks)
    writer = await started(writer_on(redis, signer, clock), clock)
    [genesis, _] = await stream_frames(redis)
    return writer, genesis.decode_body()


async def two_instances_and_a_restart(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> tuple[AuditWriter, AuditWriter, AuditWriter]:
    """Instance A runs a stream and stops; B checkpoints meanwhile; A starts again."""
    a, b = writer_on(redis, signer, clock), writer_on(redis, signer, clock)
    await b.open()
    await a.open()
    for n in range(2):
        await a.append(request_pair(n, clock.now())[0])
    await a.checkpoint()  # seq 3
    for n in range(2, 4):
        await a.append(request_pair(n, clock.now())[0])
    await a.close()  # final checkpoint: seq 6
    clock.advance(1)
    await b.append(request_pair(9, clock.now())[0])
    await b.checkpoint()  # the newest checkpoint in Redis is now B's
    restarted = writer_on(redis, signer, clock)
    await restarted.open()
    await restarted.close()
    await b.close()
    return a, b, restarted


async def test_a_restarted_instance_cites_its_previous_stream_not_only_the_newest_mark(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    a, b, restarted = await two_instances_and_a_restart(redis, signer, clock)
    frames = await stream_frames(redis)
    final_of_a = [f for f in frames if f.stream == a.stream_id][-1]
    assert read_checkpoint(final_of_a.decode_body()).checkpoint.final
    [genesis] = [f for f in frames if f.stream == restarted.stream_id and f.seq == 0]
    body = genesis.decode_body()
    cited = [body["previous"], *body.get("cites", [])]
    assert {"stream": a.stream_id, "seq": final_of_a.seq, "h": final_of_a.h} in cited
    assert body["previous"]["stream"] == b.stream_id  # the newest mark, as before


async def test_an_instance_stream_cut_back_to_a_checkpoint_is_an_error(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock, keyring: Keyring, tmp_path: Path
) -> None:
    a, _, _ = await two_instances_and_a_restart(redis, signer, clock)
    collected = tmp_path / "collected"
    assert await collect(redis, collected) > 0
    whole = verify([collected], keyring)
    assert whole.ok(strict=True), [str(f) for f in whole.findings]
    # A forger removes A's first stream after its middle checkpoint (seq 3), final included.
    kept = [f for f in read_frames(collected) if f.stream != a.stream_id or f.seq <= 3]
    assert kind_of(kept[-1].decode_body()) != RecordKind.STREAM_START
    cut = tmp_path / "cut"
    cut.mkdir()
    write_segment(cut / "all.seg", kept)
    report = verify([cut], keyring)
    assert not report.ok()
    [truncated] = [f for f in report.errors if f.code == "truncated"]
    assert a.stream_id in truncated.message


@pytest.mark.parametrize(
    "cites",
    [
        "not a list",
        [1],
        [{"stream": "x"}],
        [{"stream": STREAM_B, "seq": "0", "h": b"\0" * 32}],
    ],
    ids=["string", "number", "missing-fields", "seq-not-int"],
)
def test_hostile_citations_are_reported_not_followed(
    cites: object, signer: SigningKey, keyring: Keyring, tmp_path: Path
) -> None:
    cited = build_chain(STREAM_B, [], signer, 1.0)
    citing = build_chain(STREAM_C, [], signer, 2.0, cites=cites)
    report = verify([write_segment(tmp_path / "x.seg", [*cited, *citing])], keyring)
    [finding] = report.errors
    assert (finding.code, finding.stream, finding.seq) == ("bad_genesis", STREAM_C, 0)


def test_every_cited_stream_is_checked(
    signer: SigningKey, keyring: Keyring, tmp_path: Path
) -> None:
    first = build_chain(STREAM_B, [{"record": "x"}], signer, 1.0)
    second = build_chain(STREAM_C, [], signer, 1.5)
    last_cp = {"stream": STREAM_C, "seq": second[-1].seq, "h": second[-1].h}
    cut_cp = {"stream": STREAM_B, "seq": first[-1].seq, "h": first[-1].h}
    third = build_chain(STREAM_D, [], signer, 2.0, previous=last_cp, cites=[cut_cp])
    whole = [*first, *second, *third]
    assert verify([write_segment(tmp_path / "whole.seg", whole)], keyring).ok(strict=True)
    cut = [*first[:-1], *second, *third]  # the cited stream loses its last checkpoint
    report = verify([write_segment(tmp_path / "cut.seg", cut)], keyring)
    assert [(f.code, f.stream) for f in report.errors] == [("truncated", STREAM_D)]


async def test_the_gateway_key_schema_names_the_marks_by_stream(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    writer = await started(
        AuditWriter(
            redis,
            signer,
            stream=keys.audit_stream(),
            now=clock.now,
            last_checkpoint_key=keys.audit_last_checkpoint(),
        ),
        clock,
    )
    await writer.checkpoint()
    marks = await redis.hgetall(keys.audit_checkpoints_by_stream())
    assert list(marks) == [writer.stream_id.encode()]
    assert marks[writer.stream_id.encode()] == await redis.get(keys.audit_last_checkpoint())
    await writer.close()


async def test_two_instances_starting_at_once_both_cite_the_waiting_marks(
    redis: aioredis.Redis, redis_url: str, signer: SigningKey, clock: ManualClock
) -> None:
    old = await started(writer_on(redis, signer, clock), clock)
    await old.close()
    assert await redis.hlen(MARKS_KEY) == 1
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        starting = [writer_on(client, signer, clock) for client in clients]
        await asyncio.gather(*(w.open() for w in starting))
        frames = await stream_frames(redis)
        for writer in starting:
            [genesis] = [f for f in frames if f.stream == writer.stream_id and f.seq == 0]
            assert genesis.decode_body()["previous"]["stream"] == old.stream_id
        # Cited by both, sealed by neither yet: the mark stays until a citing stream's
        # checkpoint pins the citation.
        assert await redis.hkeys(MARKS_KEY) == [old.stream_id.encode()]
        await asyncio.gather(*(w.close() for w in starting))
        assert sorted(await redis.hkeys(MARKS_KEY)) == sorted(
            w.stream_id.encode() for w in starting
        )
    finally:
        for client in clients:
            await client.aclose()


async def test_unreadable_marks_in_redis_are_not_cited_and_change_nothing(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    hostile: dict[Any, Any] = {
        "not-msgpack": b"\xc1\xc1",
        "not-a-map": msgpack.packb([1, 2, 3]),
        "short-h": msgpack.packb({"stream": "s", "seq": 1, "h": b"x"}),
        "huge": b"\x00" * 100_000,
    }
    writer, genesis = await started_over(redis, signer, clock, hostile)
    assert "cites" not in genesis
    assert set(await redis.hkeys(MARKS_KEY)) == {k.encode() for k in hostile}
    await writer.close()


async def test_a_genesis_cites_at_most_max_cited_marks_and_leaves_the_rest(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    waiting: dict[Any, Any] = {
        f"20261129T040000Z-{n:016x}": msgpack.packb(
            {"stream": f"20261129T040000Z-{n:016x}", "seq": 1, "h": bytes(32)}
        )
        for n in range(MAX_CITED + 10)
    }
    writer, genesis = await started_over(redis, signer, clock, waiting)
    assert len(genesis["cites"]) == MAX_CITED
    await writer.checkpoint()
    left = set(await redis.hkeys(MARKS_KEY))
    assert left == {writer.stream_id.encode(), *(k.encode() for k in sorted(waiting)[-10:])}
    await writer.close()


async def test_unreadable_marks_do_not_crowd_out_readable_ones(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    # Sorted first, more of them than a genesis cites: they are skipped, not counted.
    hostile: dict[Any, Any] = {f"0-{n:04}": b"\xc1" for n in range(MAX_CITED)}
    waiting = f"{STREAM_B}"
    mark = msgpack.packb({"stream": waiting, "seq": 1, "h": bytes(32)})
    writer, genesis = await started_over(redis, signer, clock, {**hostile, waiting: mark})
    assert genesis["cites"] == [{"stream": waiting, "seq": 1, "h": bytes(32)}]
    await writer.checkpoint()
    assert await redis.hget(MARKS_KEY, waiting) is None
    assert await redis.hlen(MARKS_KEY) == MAX_CITED + 1
    await writer.close()


async def test_a_cited_mark_stays_until_the_citing_stream_has_a_checkpoint(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    old = await started(writer_on(redis, signer, clock), clock)
    await old.close()
    old_mark = await redis.hget(MARKS_KEY, old.stream_id)
    citing = await started(writer_on(redis, signer, clock), clock)
    # SECURITY: a citing stream with no checkpoint is pinned by nothing an auditor saves:
    # deleted whole, it would take its citation along, and the old stream could be cut back.
    assert await redis.hgetall(MARKS_KEY) == {old.stream_id.encode(): old_mark}
    await citing.checkpoint()
    marks = await redis.hgetall(MARKS_KEY)
    assert list(marks) == [citing.stream_id.encode()]
    await citing.close()


async def test_a_refused_first_checkpoint_leaves_the_cited_marks(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    old = await started(writer_on(redis, signer, clock), clock)
    await old.close()
    old_mark = await redis.hget(MARKS_KEY, old.stream_id)
    citing = await started(writer_on(redis, signer, clock), clock)
    first = citing.stream_id
    await redis.delete(STREAM)
    await redis.set(STREAM, b"not a stream")  # XADD is refused: the batch with it is
    with pytest.raises(AuditUnavailable):
        await citing.checkpoint()
    assert await redis.hget(MARKS_KEY, old.stream_id) == old_mark
    await redis.delete(STREAM)
    await citing.append(request_pair(1, clock.now())[0])
    assert citing.stream_id != first
    # A stream begun after a refused batch removes no mark it was not opened with: the old
    # mark stays for another stream to cite (a citation too many costs nothing).
    await citing.checkpoint()
    assert await redis.hget(MARKS_KEY, old.stream_id) == old_mark
    await citing.close()
