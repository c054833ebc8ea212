"""The audit trail's benchmark: frames/s and the writer's cost per request.

    python -c "from bench.audit_bench import main; main()"     (or via `make bench`)

For each durability mode of a private redis-server (AOF `appendfsync always`, then
`everysec`), it measures in the same run:
- a bare XADD round trip of a frame-sized payload (the floor a writer cannot beat);
- the writer appending alone (one request at a time): its cost per request in µs;
- the writer under 64 concurrent requests (group commit): frames/s and µs per request;
and, once, encode + redact + chain without Redis (a record dict through `Redactor.scrub`,
and the gateway's own path: an `HttpExchange` per request, its attempt and its outcome
encoded and sealed as the writer does), and the collector's frames/s from the stream to
fsynced segment files. Ratios compare the writer with the bare XADD.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from audit.collector import Collector
from audit.exchange import HttpExchange
from audit.frame import Frame, FrameSealer, encode_body
from audit.keys import SigningKey
from audit.record import Person, http_record
from audit.redact import Redactor
from audit.writer import FRAME_FIELD, AuditWriter
from gateway.embedded_redis import EmbeddedRedis

SEQUENTIAL = 1500
CONCURRENT_TASKS = 64
CONCURRENT_FRAMES = 12_800
STREAM = "bench:audit:frames"


def _body(n: int, at: float) -> dict[str, Any]:
    return http_record(
        "attempt",
        at=at,
        request_id=f"r{n}",
        method="GET",
        host="acme.gateway.example",
        path=f"/invoices/{n}",
        query="page=2",
        client_ip="192.0.2.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64)",
        actor=Person("sam", kind="staff", email="sam@vendor.example", name="Sam"),
        effective=Person("bob", kind="member", org="acme"),
        org="acme",
        grant_id="g-123",
        scope="read",
        route="acme",
        session_id="session-1",
        decision="allow",
        reason="rule config/policies/demo.yaml:12",
        started_at=at,
    )


async def _timed(action: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


def _encode_chain_rate(count: int = 20_000) -> float:
    redactor = Redactor(b"k" * 32)
    head = bytes(32)
    now = time.time()
    start = time.perf_counter()
    for n in range(count):
        frame = Frame.seal("bench", n, head, encode_body(redactor.scrub(_body(n, now))))
        head = frame.h
        frame.encode()
    return count / (time.perf_counter() - start)


# What a forwarded request's outcome lists: the headers sent upstream (the gateway's own
# identity and assertion among them) and those the upstream answered with.
_ASSERTION = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl"
_UPSTREAM_REQUEST = [
    ("Host", "127.0.0.1:8080"),
    ("Accept", "*/*"),
    ("User-Agent", "wrk"),
    ("X-Forwarded-For", "192.0.2.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "acme.gateway.example"),
    ("X-Gateway-User", "bob"),
    ("X-Gateway-Actor", "sam"),
    ("X-Gateway-Grant", "g-123"),
    ("X-Gateway-Assertion", _ASSERTION),
]
_UPSTREAM_RESPONSE = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("Content-Length", "61"),
    ("Date", "Sun, 29 Nov 2026 11:50:00 GMT"),
    ("Server", "Python/3.11 aiohttp/3.9"),
]


def _exchange_chain_rate(count: int = 10_000) -> float:
    """Frames/s of the gateway's own path: two frames (attempt, outcome) per request."""
    redactor = Redactor(b"k" * 32)
    sealer = FrameSealer("bench")
    actor = Person("sam", kind="staff", email="sam@vendor.example", name="Sam")
    effective = Person("bob", kind="member", org="acme")
    head = bytes(32)
    now = time.time()
    start = time.perf_counter()
    for n in range(count):
        exchange = HttpExchange(
            request_id=f"{n:016x}",
            method="GET",
            host="acme.gateway.example",
            path=f"/invoices/{n}",
            client_ip="192.0.2.7",
            user_agent="wrk",
            actor=actor,
            effective=effective,
            org="acme",
            grant_id="g-123",
            scope="read",
            route="acme",
            session_id="session-1",
            decision="allow",
            reason="no rule matched; route acme default is allow",
            started_at=now,
        )
        head, _ = sealer.seal(2 * n, head, exchange.attempt(now).encode(redactor))
        outcome = exchange.outcome(
            now,
            status=200,
            request_bytes=0,
            response_bytes=61,
            timings={"total": 2.1, "wait": 1.5, "receive": 0.6},
            request_headers=_UPSTREAM_REQUEST,
            response_headers=_UPSTREAM_RESPONSE,
        )
        head, _ = sealer.seal(2 * n + 1, head, outcome.encode(redactor))
    return 2 * count / (time.perf_counter() - start)


async def _mode(appendfsync: str, root: Path) -> dict[str, float]:
    server = EmbeddedRedis(root / appendfsync, appendfsync=appendfsync, persistent=True)
    server.start()
    client: aioredis.Redis = aioredis.Redis.from_url(server.url)
    results: dict[str, float] = {}
    try:
        sample = Frame.seal("bench", 1, bytes(32), encode_body(_body(1, time.time()))).encode()

        async def bare() -> None:
            for _ in range(SEQUENTIAL):
                await client.xadd(STREAM, {FRAME_FIELD: sample})

        results["xadd_us"] = await _timed(bare) / SEQUENTIAL * 1e6
        await client.delete(STREAM)

        writer = AuditWriter(
            client,
            SigningKey.generate("bench"),
            stream=STREAM,
            now=time.time,
            redactor=Redactor(b"k" * 32),
        )
        await writer.open()
        bodies = [_body(n, time.time()) for n in range(max(SEQUENTIAL, CONCURRENT_FRAMES))]

        async def alone() -> None:
            for body in bodies[:SEQUENTIAL]:
                await writer.append(body)

        results["writer_alone_us"] = await _timed(alone) / SEQUENTIAL * 1e6
        per_task = CONCURRENT_FRAMES // CONCURRENT_TASKS

        async def request_task(offset: int) -> None:
            for body in bodies[offset : offset + per_task]:
                await writer.append(body)

        async def concurrent() -> None:
            await asyncio.gather(*(request_task(i * per_task) for i in range(CONCURRENT_TASKS)))

        pipelines_before = writer.pipelines
        elapsed = await _timed(concurrent)
        results["writer_concurrent_fps"] = CONCURRENT_FRAMES / elapsed
        results["writer_concurrent_us"] = elapsed / CONCURRENT_FRAMES * 1e6
        results["frames_per_pipeline"] = CONCURRENT_FRAMES / max(
            1, writer.pipelines - pipelines_before
        )
        await writer.close()
    finally:
        await client.aclose()
        server.stop()
    return results


async def _collector_rate(root: Path) -> float:
    server = EmbeddedRedis(root / "collector", appendfsync="everysec", persistent=True)
    server.start()
    client: aioredis.Redis = aioredis.Redis.from_url(server.url)
    try:
        writer = AuditWriter(client, SigningKey.generate("bench"), stream=STREAM, now=time.time)
        await writer.open()
        await asyncio.gather(*(writer.append(_body(n, time.time())) for n in range(20_000)))
        await writer.close()
        total = await client.xlen(STREAM)
        collector = Collector(
            client,
            stream=STREAM,
            segment_dir=root / "segments",
            consumer="bench",
            now=time.time,
            block_ms=10,
        )
        elapsed = await _timed(lambda: _run_once(collector))
        return total / elapsed
    finally:
        await client.aclose()
        server.stop()


async def _run_once(collector: Collector) -> None:
    await collector.run_once()


async def _run() -> None:
    print("audit trail benchmark")
    print(f"  encode + redact + chain (no Redis): {_encode_chain_rate():>10,.0f} frames/s")
    print(f"    the gateway's path (HttpExchange): {_exchange_chain_rate():>10,.0f} frames/s")
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        root = Path(tmp)
        modes = {mode: await _mode(mode, root) for mode in ("always", "everysec")}
        for mode, r in modes.items():
            print(f"  appendfsync {mode}:")
            print(f"    bare XADD round trip:            {r['xadd_us']:>10.1f} µs")
            print(
                f"    writer, one request at a time:   {r['writer_alone_us']:>10.1f} µs/request"
                f"  ({r['writer_alone_us'] / r['xadd_us']:.2f}× a bare XADD)"
            )
            print(
                f"    writer, {CONCURRENT_TASKS} concurrent requests:  "
                f"{r['writer_concurrent_us']:>8.1f} µs/request"
                f"  ({r['writer_concurrent_us'] / r['xadd_us']:.2f}× a bare XADD), "
                f"{r['writer_concurrent_fps']:,.0f} frames/s, "
                f"{r['frames_per_pipeline']:.1f} frames per pipeline"
            )
        always, everysec = modes["always"], modes["everysec"]
        xadd_ratio = always["xadd_us"] / everysec["xadd_us"]
        fps_ratio = everysec["writer_concurrent_fps"] / always["writer_concurrent_fps"]
        print(
            f"  everysec vs always: bare XADD {xadd_ratio:.2f}× faster, "
            f"concurrent writer {fps_ratio:.2f}× the frames/s"
        )
        print(
            f"  collector to fsynced segments:     {await _collector_rate(root):>10,.0f} frames/s"
        )


def main() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    main()
