"""Audit fixtures: a signing key and its keyring, a writer on the real Redis, and a way to
turn what was written into segment files through the real collector."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit.collector import Collector
from audit.frame import Frame, decode_frame
from audit.keys import Keyring, PublicKey, SigningKey
from audit.record import BodyCapture, Person, event_record, http_record
from audit.redact import Redactor
from audit.writer import FRAME_FIELD, AuditWriter
from gateway.clock import ManualClock

STREAM = "test:audit:frames"
SAM = Person("sam", kind="staff", email="sam@vendor.example", name="Sam")
BOB = Person("bob", kind="member", email="bob@acme.example", org="acme")
ALICE = Person("alice", kind="member", org="acme", role="admin")


@pytest.fixture
def signer() -> SigningKey:
    return SigningKey.generate("k1")


@pytest.fixture
def keyring(signer: SigningKey) -> Keyring:
    return Keyring((PublicKey(signer.key_id, signer.public_bytes(), 0.0, None),))


@pytest.fixture
def keyring_file(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "keyring.json"
    path.write_text(keyring.to_json())
    return path


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(b"k" * 32, "test")


WriterFactory = Callable[..., Awaitable[AuditWriter]]


@pytest.fixture
async def make_writer(
    redis: aioredis.Redis, signer: SigningKey, clock: ManualClock, redactor: Redactor
) -> AsyncIterator[WriterFactory]:
    writers: list[AuditWriter] = []

    async def make(client: aioredis.Redis | None = None, **overrides: Any) -> AuditWriter:
        options: dict[str, Any] = {
            "stream": STREAM,
            "now": clock.now,
            "checkpoint_every_frames": 1000,
            "checkpoint_every_s": 3600.0,
            "redactor": redactor,
        }
        options.update(overrides)
        writer = AuditWriter(client or redis, signer, **options)
        await writer.open()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.close()


BARE_HTTP: dict[str, Any] = {
    "at": 1.0,
    "request_id": "r",
    "method": "GET",
    "host": "h",
    "path": "/",
}


def bare_http_record(phase: str = "outcome", **fields: Any) -> dict[str, Any]:
    """An http record of `phase` with only the required fields, and `fields` on top."""
    return http_record(phase, **{**BARE_HTTP, **fields})


def request_pair(
    n: int, at: float, *, grant: str = "g1", status: int = 200
) -> tuple[dict[str, object], dict[str, object]]:
    """The attempt and outcome records of one proxied request number `n`."""
    common: dict[str, object] = {
        "request_id": f"r{n}",
        "method": "POST" if n % 2 else "GET",
        "host": "acme.gateway.example",
        "path": f"/invoices/{n}",
        "query": "page=2",
        "client_ip": "192.0.2.7",
        "user_agent": "Mozilla/5.0",
        "actor": SAM,
        "effective": BOB,
        "org": "acme",
        "grant_id": grant,
        "scope": "write",
        "route": "acme",
        "session_id": "console-session-1",
        "started_at": at,
    }
    attempt = http_record(
        "attempt",
        at=at,
        decision="allow",
        reason="rule config/policies/acme.yaml:12",
        request_headers=[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer abcdefgh12345"),
        ],
        request_body=BodyCapture(b'{"name":"x","password":"hunter2"}', "application/json", 33),
        **common,  # type: ignore[arg-type]
    )
    outcome = http_record(
        "outcome",
        at=at + 0.0125,
        status=status,
        request_bytes=33,
        response_bytes=17,
        timings={"connect": 1.0, "send": 0.5, "wait": 9.0, "receive": 2.0, "total": 12.5},
        response_headers=[
            ("Content-Type", "application/json"),
            ("Set-Cookie", "sid=s3cr3t; Path=/"),
        ],
        response_body=BodyCapture(b'{"ok":true,"n":1}', "application/json", 17),
        **common,  # type: ignore[arg-type]
    )
    return attempt, outcome


def _grant_event(action: str, at: float, **fields: Any) -> dict[str, Any]:
    """A workflow event of grant g1 by Alice, acme's admin."""
    return event_record(
        action, at=at, category="workflow", actor=ALICE, org="acme", grant_id="g1", **fields
    )


async def write_session(writer: AuditWriter, clock: ManualClock, requests: int) -> None:
    """A small realistic session: approval, requests, revocation."""
    await writer.append(_grant_event("grant.approved", clock.now(), details={"scope": "write"}))
    for n in range(requests):
        clock.advance(1)
        attempt, outcome = request_pair(n, clock.now())
        await writer.append(attempt)
        await writer.append(outcome)
    clock.advance(1)
    await writer.append(_grant_event("grant.revoked", clock.now()))


SessionWriter = Callable[..., Awaitable[list[Frame]]]


@pytest.fixture
def write_closed_session(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock
) -> SessionWriter:
    """Writes a session of `requests` requests with a writer it then closes, and returns every
    frame the stream holds afterwards; keyword arguments go to the writer."""

    async def write(requests: int, **overrides: Any) -> list[Frame]:
        writer = await make_writer(**overrides)
        await write_session(writer, clock, requests)
        await writer.close()
        return await stream_frames(redis)

    return write


async def collect(redis: aioredis.Redis, segment_dir: Path, consumer: str = "c1") -> int:
    collector = Collector(
        redis,
        stream=STREAM,
        segment_dir=segment_dir,
        consumer=consumer,
        now=lambda: 0.0,
        block_ms=10,
    )
    return await collector.run_once()


async def stream_frames(redis: aioredis.Redis, key: str = STREAM) -> list[Frame]:
    """Every frame now in the Redis stream, in stream order."""
    entries: Any = await redis.xrange(key)
    return [decode_frame(fields[FRAME_FIELD]) for _id, fields in entries]
