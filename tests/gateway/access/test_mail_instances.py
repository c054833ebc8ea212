"""Two gateway instances delivering one mail queue: a sender whose lease ran out while it
was stuck at a slow SMTP server neither sends what another instance took over nor, when
its own late delivery fails, brings a delivered message back half-written (which would
stop every instance's deliveries)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller

from gateway import keys
from gateway.access.mail import LEASE_S, MailQueue
from gateway.access.sender import MailSender
from gateway.clock import ManualClock
from gateway.config import Smtp
from tests.gateway.access.smtp import Inbox, free_port

WAIT_S = 30.0  # generous: a loaded machine


@dataclass
class GatedInbox:
    """An SMTP server that holds every message until `gate` opens, then takes or refuses it."""

    gate: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    refuse: bool = False
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.arrived.set()
        # The server runs its own loop in its own thread: the gate is a thread's event.
        await asyncio.to_thread(self.gate.wait, WAIT_S)
        if self.refuse:
            return "554 Transaction failed"
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


def start_gated(gated: GatedInbox) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(gated, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


async def wait_for(event: threading.Event) -> None:
    deadline = time.monotonic() + WAIT_S
    while not event.is_set():
        assert time.monotonic() < deadline, "the slow SMTP server never got the message"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("refuse", [False, True], ids=["late-success", "late-failure"])
async def test_a_sender_past_its_lease_sends_nothing_another_took_over(
    redis: aioredis.Redis,  # flushed: the queue holds only this test's mail
    redis_url: str,
    clock: ManualClock,
    smtp_inbox: tuple[Inbox, int],
    refuse: bool,
) -> None:
    fast_inbox, fast_port = smtp_inbox
    gated = GatedInbox(refuse=refuse)
    controller, slow_port = start_gated(gated)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        slow_queue, fast_queue = (MailQueue(c, clock) for c in clients)
        first = await slow_queue.enqueue("alice@acme.example", "first", "body")
        clock.advance(1)  # due one after the other: claimed in this order
        second = await slow_queue.enqueue("carol@acme.example", "second", "body")
        slow = MailSender(slow_queue, Smtp(port=slow_port, security="plain"), timeout_s=WAIT_S)
        fast = MailSender(fast_queue, Smtp(port=fast_port, security="plain"))
        stuck = asyncio.create_task(slow.send_due())
        await wait_for(gated.arrived)  # instance A holds both messages, stuck on the first
        clock.advance(LEASE_S + 1)  # ... past its lease: instance B takes both over
        assert await fast.send_due() == (2, 0)
        gated.gate.set()
        sent, failed = await asyncio.wait_for(stuck, WAIT_S)
        # The first was already on the wire when its lease ran out: one duplicate at most.
        # The second was never started by A and must not go out twice.
        assert [m["Subject"] for m in gated.messages] == ([] if refuse else ["first"])
        assert sorted(m["Subject"] for m in fast_inbox.messages) == ["first", "second"]
        assert (sent, failed) == ((0, 1) if refuse else (1, 0))
        # Nothing delivered comes back, half-written or whole.
        for message_id in (first, second):
            assert not await clients[0].exists(keys.mail_message(message_id))
        assert await fast_queue.waiting() == []
        assert await fast_queue.undelivered() == []
        # Every instance still delivers the next notice.
        await fast_queue.enqueue("erin@acme.example", "third", "body")
        assert await fast.send_due() == (1, 0)
        assert [m["Subject"] for m in fast_inbox.to("erin@acme.example")] == ["third"]
    finally:
        gated.gate.set()
        controller.stop()
        for c in clients:
            await c.aclose()


async def test_a_message_without_its_fields_stops_no_delivery(
    redis: aioredis.Redis, clock: ManualClock, smtp_inbox: tuple[Inbox, int]
) -> None:
    queue_redis = redis
    fast_inbox, port = smtp_inbox
    queue = MailQueue(queue_redis, clock)
    # A record left without its fields (written around `enqueue`): skipped and dropped.
    await queue_redis.hset(keys.mail_message("damaged"), mapping={"attempts": "1"})
    await queue_redis.zadd(keys.mail_queue(), {"damaged": clock.now(), "gone": clock.now()})
    await queue.enqueue("alice@acme.example", "fine", "body")
    sender = MailSender(queue, Smtp(port=port, security="plain"))
    assert await sender.send_due() == (1, 0)
    assert [m["Subject"] for m in fast_inbox.messages] == ["fine"]
    assert await queue_redis.zcard(keys.mail_queue()) == 0
    assert await queue.get("damaged") is None


async def test_renewing_a_message_never_claimed_is_refused(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    queue = MailQueue(redis, clock)
    message_id = await queue.enqueue("alice@acme.example", "s", "b")
    message = await queue.get(message_id)
    assert message is not None
    with pytest.raises(ValueError, match="not claimed"):
        await queue.renew(message)
    [waiting] = await queue.waiting()
    assert waiting.id == message_id
