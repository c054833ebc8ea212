"""The mail queue and its sender against a real aiosmtpd server: TLS, STARTTLS, plain only
when configured, and an outage that delays a notice without losing it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access.mail import MAX_ATTEMPTS, MailQueue, backoff
from gateway.access.sender import MailSender
from gateway.clock import ManualClock
from gateway.config import Smtp
from tests.gateway.access.smtp import (
    Inbox,
    client_context,
    free_port,
    make_cert,
    server_context,
    start_smtp,
)


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path)


@pytest.fixture
def queue(redis: aioredis.Redis, clock: ManualClock) -> MailQueue:
    return MailQueue(redis, clock)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def plain_port(inbox: Inbox) -> Iterator[int]:
    port = free_port()
    controller = start_smtp(inbox, port)
    yield port
    controller.stop()


async def test_plain_delivery_when_configured(
    queue: MailQueue, inbox: Inbox, plain_port: int
) -> None:
    sender = MailSender(queue, Smtp(port=plain_port, security="plain", sender="gw@vendor.example"))
    await queue.enqueue("alice@acme.example", "Access request", "Sam asks for access.")
    assert await sender.send_due() == (1, 0)
    [message] = inbox.messages
    assert (message["To"], message["From"], message["Subject"]) == (
        "alice@acme.example",
        "gw@vendor.example",
        "Access request",
    )
    assert "Sam asks for access." in message.get_payload()
    assert await queue.waiting() == []
    assert await sender.send_due() == (0, 0)


async def test_implicit_tls(queue: MailQueue, inbox: Inbox, cert: tuple[Path, Path]) -> None:
    port = free_port()
    controller = start_smtp(inbox, port, ssl_context=server_context(*cert))
    try:
        sender = MailSender(
            queue, Smtp(port=port, security="tls"), tls_context=client_context(cert[0])
        )
        await queue.enqueue("alice@acme.example", "Over TLS", "body")
        assert await sender.send_due() == (1, 0)
        assert [m["Subject"] for m in inbox.messages] == ["Over TLS"]
        # An untrusted certificate is refused: nothing is sent.
        untrusting = MailSender(queue, Smtp(port=port, security="tls"))
        await queue.enqueue("alice@acme.example", "Untrusted", "body")
        assert await untrusting.send_due() == (0, 1)
        assert len(inbox.messages) == 1
    finally:
        controller.stop()


async def test_starttls_required(
    queue: MailQueue, inbox: Inbox, cert: tuple[Path, Path], plain_port: int
) -> None:
    port = free_port()
    controller = start_smtp(inbox, port, tls_context=server_context(*cert), require_starttls=True)
    try:
        sender = MailSender(
            queue, Smtp(port=port, security="starttls"), tls_context=client_context(cert[0])
        )
        await queue.enqueue("alice@acme.example", "Upgraded", "body")
        assert await sender.send_due() == (1, 0)
        assert [m["Subject"] for m in inbox.messages] == ["Upgraded"]
    finally:
        controller.stop()
    # A server without STARTTLS gets nothing when STARTTLS is required.
    refusing = MailSender(
        queue, Smtp(port=plain_port, security="starttls"), tls_context=client_context(cert[0])
    )
    await queue.enqueue("alice@acme.example", "Must not go in clear", "secret body")
    assert await refusing.send_due() == (0, 1)
    assert [m["Subject"] for m in inbox.messages] == ["Upgraded"]
    [waiting] = await queue.waiting()
    assert waiting.attempts == 1
    assert "STARTTLS" in waiting.last_error or "starttls" in waiting.last_error.lower()


async def test_smtp_down_then_back(queue: MailQueue, inbox: Inbox, clock: ManualClock) -> None:
    port = free_port()
    sender = MailSender(queue, Smtp(port=port, security="plain"), timeout_s=2)
    message_id = await queue.enqueue("sam@vendor.example", "Approved", "Your access is approved.")
    assert await sender.send_due() == (0, 1)
    [waiting] = await queue.waiting()
    assert (waiting.id, waiting.attempts) == (message_id, 1)
    assert waiting.next_at == pytest.approx(clock.now() + backoff(1))
    assert waiting.last_error
    # Not due again before the backoff is over, even once the server is back.
    controller = start_smtp(inbox, port)
    try:
        assert await sender.send_due() == (0, 0)
        clock.advance(backoff(1))
        assert await sender.send_due() == (1, 0)
        assert [m["Subject"] for m in inbox.messages] == ["Approved"]
        assert await queue.waiting() == []
    finally:
        controller.stop()


async def test_given_up_messages_stay_visible_and_can_be_retried(
    queue: MailQueue, inbox: Inbox, clock: ManualClock, redis: aioredis.Redis
) -> None:
    port = free_port()
    sender = MailSender(queue, Smtp(port=port, security="plain"), timeout_s=2)
    message_id = await queue.enqueue("sam@vendor.example", "Lapsed", "Your request lapsed.")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert await sender.send_due() == (0, 1)
        clock.advance(backoff(attempt))
    assert await queue.waiting() == []
    [given_up] = await queue.undelivered()
    assert (given_up.id, given_up.attempts) == (message_id, MAX_ATTEMPTS)
    assert await sender.send_due() == (0, 0)
    controller = start_smtp(inbox, port)
    try:
        assert await queue.retry(message_id)
        assert not await queue.retry("nope")
        assert await sender.send_due() == (1, 0)
        assert await queue.undelivered() == []
        assert not await redis.exists(keys.mail_message(message_id))
    finally:
        controller.stop()


async def test_two_senders_never_send_one_message_twice(
    redis_url: str, clock: ManualClock, inbox: Inbox, plain_port: int
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        queues = [MailQueue(c, clock) for c in clients]
        for n in range(10):
            await queues[0].enqueue("alice@acme.example", f"n{n}", "body")
        senders = [MailSender(q, Smtp(port=plain_port, security="plain")) for q in queues]
        results = await asyncio.gather(*(s.send_due(limit=10) for s in senders))
        assert sum(sent for sent, _ in results) == 10
        assert sorted(m["Subject"] for m in inbox.messages) == sorted(f"n{n}" for n in range(10))
    finally:
        for c in clients:
            await c.aclose()


async def test_header_injection_refused(queue: MailQueue, redis: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="single lines"):
        await queue.enqueue("a@b.example\r\nBcc: evil@x.example", "s", "b")
    with pytest.raises(ValueError, match="single lines"):
        await queue.enqueue("a@b.example", "s\nBcc: evil@x.example", "b")
    assert await redis.dbsize() == 0


async def test_a_message_that_cannot_be_built_is_recorded_and_holds_back_no_other(
    queue: MailQueue, redis: aioredis.Redis, inbox: Inbox, plain_port: int
) -> None:
    sender = MailSender(queue, Smtp(port=plain_port, security="plain", sender="gw@vendor.example"))
    damaged = await queue.enqueue("alice@acme.example", "Access request", "first")
    await queue.enqueue("carol@acme.example", "Access request", "second")
    # A damaged record (written around `enqueue`): no message can carry this header.
    await redis.hset(keys.mail_message(damaged), "to", "alice@acme.example\nBcc: x@evil.example")
    assert await sender.send_due() == (1, 1)
    assert [m["To"] for m in inbox.messages] == ["carol@acme.example"]
    [waiting] = await queue.waiting()
    assert waiting.id == damaged
    assert waiting.attempts == 1
    assert waiting.last_error.startswith("ValueError")
