"""The writer against a real Redis: chaining, group commit, checkpoints, failing closed."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
from pathlib import Path

import msgpack
import pytest
import redis.asyncio as aioredis

from audit.checkpoint import read_checkpoint
from audit.errors import AuditUnavailable, RecordError
from audit.exchange import HttpExchange
from audit.frame import GENESIS_PREV, encode_body
from audit.keys import KeyDirectory, SigningKey
from audit.record import http_record
from audit.redact import Redactor
from audit.verify import verify
from audit.writer import APPEND_SCRIPT_SHA, AuditWriter
from gateway.clock import ManualClock
from gateway.embedded_redis import EmbeddedRedis
from tests.audit.chains import read_frames
from tests.audit.conftest import (
    BOB,
    SAM,
    STREAM,
    WriterFactory,
    collect,
    request_pair,
    stream_frames,
)

frames_in = stream_frames


async def test_append_returns_seq_after_redis_holds_the_chained_frame(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer()
    attempt, _ = request_pair(1, clock.now())
    seq = await writer.append(attempt)
    assert seq == 1
    frames = await frames_in(redis)
    assert [f.seq for f in frames] == [0, 1]
    genesis, first = frames
    assert genesis.prev == GENESIS_PREV
    assert first.prev == genesis.h
    assert all(f.hash_ok() for f in frames)
    body = first.decode_body()
    assert body["user"]["id"] == "sam"
    assert body["user"]["effective"]["id"] == "bob"
    assert "hunter2" not in str(body)
    assert "abcdefgh12345" not in str(body)


async def test_concurrent_appends_share_pipelines_and_keep_call_order(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer()
    before = writer.pipelines
    bodies = [request_pair(n, clock.now())[0] for n in range(200)]
    seqs = await asyncio.gather(*(writer.append(b) for b in bodies))
    assert seqs == list(range(1, 201))
    assert writer.pipelines - before <= 2  # one group commit (+1 if a tick split them)
    frames = await frames_in(redis)
    assert [f.seq for f in frames] == list(range(201))
    for earlier, later in itertools.pairwise(frames):
        assert later.prev == earlier.h


async def test_checkpoint_every_n_frames_signs_the_chain_head(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, signer: SigningKey
) -> None:
    writer = await make_writer(checkpoint_every_frames=3)
    for n in range(6):
        await writer.append(request_pair(n, clock.now())[0])
    frames = await frames_in(redis)
    kinds = [f.decode_body()["record"] for f in frames]
    assert kinds.count("checkpoint") == 2
    cp_frame = frames[kinds.index("checkpoint")]
    cp = read_checkpoint(cp_frame.decode_body()).checkpoint
    assert (cp.first_seq, cp.last_seq) == (0, 3)
    assert cp.head == frames[3].h
    assert cp.key_id == signer.key_id
    assert cp.final is False


async def test_checkpoint_after_t_seconds_by_the_clock(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer(checkpoint_every_s=5.0)
    await writer.append(request_pair(0, clock.now())[0])
    clock.advance(6)
    await writer.append(request_pair(1, clock.now())[0])
    kinds = [f.decode_body()["record"] for f in await frames_in(redis)]
    assert kinds == ["stream.start", "http.attempt", "http.attempt", "checkpoint"]


async def test_checkpoint_timer_seals_an_idle_stream(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer(checkpoint_every_s=0.05)
    await writer.append(request_pair(0, clock.now())[0])
    for _ in range(100):
        await asyncio.sleep(0.02)
        frames = await frames_in(redis)
        if frames[-1].decode_body()["record"] == "checkpoint":
            break
    assert frames[-1].decode_body()["record"] == "checkpoint"


async def test_close_writes_a_final_checkpoint_and_next_stream_cites_it(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock
) -> None:
    first = AuditWriter(redis, signer, stream=STREAM, now=clock.now)
    await first.open()
    await first.append(request_pair(0, clock.now())[0])
    await first.close()
    with pytest.raises(AuditUnavailable):
        await first.append(request_pair(1, clock.now())[0])
    second = AuditWriter(redis, signer, stream=STREAM, now=clock.now)
    await second.open()
    await second.close()
    frames = await frames_in(redis)
    last_of_first = frames[2]
    cp = read_checkpoint(last_of_first.decode_body()).checkpoint
    assert cp.final is True
    genesis = frames[3].decode_body()
    assert genesis["previous"] == {
        "stream": first.stream_id,
        "seq": 2,
        "h": last_of_first.h,
    }
    stored = msgpack.unpackb(await redis.get(f"{STREAM}:last-checkpoint"))
    assert stored["stream"] == second.stream_id


@pytest.mark.parametrize(
    "body",
    [
        {"record": "x", "value": object()},
        {"record": "x", "big": "a" * (5 * 1024 * 1024)},
        ["not", "a", "mapping"],
    ],
)
async def test_unstorable_bodies_are_refused_and_chain_nothing(
    redis: aioredis.Redis, make_writer: WriterFactory, body: object
) -> None:
    writer = await make_writer()
    with pytest.raises(RecordError):
        await writer.append(body)  # type: ignore[arg-type]
    assert writer.seq == 1
    assert len(await frames_in(redis)) == 1


async def test_redis_down_fails_closed_then_recovers_in_a_new_stream(
    tmp_path: Path, signer: SigningKey, clock: ManualClock
) -> None:
    server = EmbeddedRedis(tmp_path / "r", persistent=False)
    server.start()
    client: aioredis.Redis = aioredis.Redis.from_url(server.url)
    writer = AuditWriter(client, signer, stream=STREAM, now=clock.now, timeout_s=1.0)
    try:
        await writer.open()
        await writer.append(request_pair(0, clock.now())[0])
        await writer.checkpoint()
        old_stream = writer.stream_id
        server.stop()
        results = await asyncio.gather(
            *(writer.append(request_pair(n, clock.now())[0]) for n in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, AuditUnavailable) for r in results)
        server.start()
        seq = await writer.append(request_pair(9, clock.now())[0])
        assert seq == 1
        assert writer.stream_id != old_stream
        fresh = [f for f in await stream_frames(client) if f.stream == writer.stream_id]
        assert fresh[0].decode_body()["previous"]["stream"] == old_stream
    finally:
        await writer.close()
        await client.aclose()
        server.stop()


async def test_a_running_writer_follows_key_rotation(
    redis: aioredis.Redis, clock: ManualClock, tmp_path: Path
) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    signer = keys.ensure(now=clock.now())
    writer = AuditWriter(redis, signer, stream=STREAM, now=clock.now)
    await writer.open()
    await writer.append(request_pair(0, clock.now())[0])
    await writer.checkpoint()
    clock.advance(10)
    rotated = keys.rotate(now=clock.now())
    clock.advance(1)
    await writer.append(request_pair(1, clock.now())[0])
    await writer.close()
    await collect(redis, tmp_path / "seg")
    report = verify([tmp_path / "seg"], keys.keyring())
    assert report.findings == []
    assert report.checkpoints == 3  # explicit, by the clock (11 s > 10 s), final
    frames = read_frames(tmp_path / "seg")  # the collector trimmed the stream
    assert read_checkpoint(frames[-1].decode_body()).checkpoint.key_id == rotated.key_id
    assert read_checkpoint(frames[2].decode_body()).checkpoint.key_id == signer.key_id


async def test_accepted_frames_survive_a_redis_crash_with_appendfsync_always(
    tmp_path: Path, signer: SigningKey, clock: ManualClock
) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendfsync="always", persistent=True)
    server.start()
    client: aioredis.Redis = aioredis.Redis.from_url(server.url)
    writer = AuditWriter(client, signer, stream=STREAM, now=clock.now, timeout_s=1.0)
    try:
        await writer.open()
        seqs = await asyncio.gather(
            *(writer.append(request_pair(n, clock.now())[0]) for n in range(50))
        )
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)  # no shutdown, no final save: only the AOF
        server.stop()
        server.start()
        fresh: aioredis.Redis = aioredis.Redis.from_url(server.url)
        frames = await stream_frames(fresh)
        await fresh.aclose()
        assert [f.seq for f in frames] == [0, *seqs]
        assert all(f.hash_ok() for f in frames)
    finally:
        await writer.close()
        await client.aclose()
        server.stop()


async def test_a_batch_cut_short_in_flight_is_refused_not_left_hanging(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer()
    first = writer.stream_id
    await redis.client_pause(300, all=False)  # WRITE pause: the batch waits in Redis
    appending = asyncio.ensure_future(writer.append(request_pair(0, clock.now())[0]))
    for _ in range(50):
        await asyncio.sleep(0.005)
        if writer._flush_task is not None and not writer._flush_task.done():
            break
    flush = writer._flush_task
    assert flush is not None
    assert not flush.done()
    flush.cancel()  # as at shutdown: the reply never reaches this writer
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(appending, 2.0)
    await asyncio.sleep(0.35)  # the pause ends
    assert await writer.append(request_pair(1, clock.now())[0]) == 1
    assert writer.stream_id != first  # the refused batch ended its stream


async def test_submit_chains_at_once_and_its_future_gives_the_seq(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer()
    attempt, outcome = request_pair(1, clock.now())
    first = writer.submit(attempt)
    assert writer.seq == 2  # chained before any Redis round trip
    second = writer.submit(outcome)
    assert list(await asyncio.gather(first, second)) == [1, 2]
    assert [f.seq for f in await frames_in(redis)] == [0, 1, 2]
    with pytest.raises(RecordError):
        writer.submit({"record": "x", "bad": object()})
    assert writer.seq == 3  # a refused body chains nothing


async def test_exchange_records_are_stored_as_the_redactors_own_path_stores_them(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, redactor: Redactor
) -> None:
    writer = await make_writer()
    exchange = HttpExchange(
        request_id="r1",
        method="GET",
        host="acme.example",
        path="/invoices",
        query="page=2&token=abc",
        actor=SAM,
        effective=BOB,
        org="acme",
        grant_id="g1",
        scope="read",
        route="acme",
        decision="allow",
        reason="rule 1",
        started_at=clock.now(),
    )
    records = [
        exchange.attempt(clock.now()),
        exchange.outcome(
            clock.now() + 0.01,
            status=200,
            request_headers=[("Authorization", "Bearer abcdefgh12345")],
            response_headers=[("Content-Type", "application/json")],
        ),
    ]
    for record in records:
        await writer.append(record)
    stored = [f.body for f in (await frames_in(redis))[1:]]
    assert stored == [
        redactor.scrub_encoded(http_record(r.phase, **r.arguments()), encode_body) for r in records
    ]
    assert "abcdefgh12345" not in str([msgpack.unpackb(b) for b in stored])


async def test_redis_losing_the_append_script_costs_no_frame(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> None:
    writer = await make_writer()
    assert await writer.append(request_pair(0, clock.now())[0]) == 1
    assert await redis.script_exists(APPEND_SCRIPT_SHA) == [True]  # the digest Redis uses
    await redis.script_flush()  # as after a restart or a failover: the script is gone
    seqs = await asyncio.gather(
        *(writer.append(request_pair(n, clock.now())[0]) for n in range(1, 6))
    )
    assert sorted(seqs) == [2, 3, 4, 5, 6]
    assert await redis.script_exists(APPEND_SCRIPT_SHA) == [True]  # loaded again
    assert await writer.append(request_pair(6, clock.now())[0]) == 7
    frames = await frames_in(redis)
    assert [f.seq for f in frames] == list(range(8))
    assert all(f.prev == before.h for before, f in itertools.pairwise(frames))


async def test_refused_frames_nobody_awaits_are_not_reported_unretrieved(
    tmp_path: Path, signer: SigningKey, clock: ManualClock
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    server = EmbeddedRedis(tmp_path / "r", persistent=False)
    server.start()
    client: aioredis.Redis = aioredis.Redis.from_url(server.url)
    writer = AuditWriter(client, signer, stream=STREAM, now=clock.now, timeout_s=1.0)
    try:
        await writer.open()
        server.stop()
        with pytest.raises(AuditUnavailable):
            await writer.append(request_pair(0, clock.now())[0])
        # A new stream: its genesis and this checkpoint have no awaiter, and are refused.
        done = writer.submit(request_pair(1, clock.now())[0])
        writer._queue_checkpoint(final=False)
        with pytest.raises(AuditUnavailable):
            await done
        gc.collect()
        await asyncio.sleep(0)
        assert [c for c in reported if "never retrieved" in str(c.get("message"))] == []
    finally:
        loop.set_exception_handler(None)
        await writer.close()
        await client.aclose()
        server.stop()
