"""Two gateway instances on one Redis, each with its own sweeper, notices consumer and mail
sender, running at the same moments: each lapse and expiry is made once, and each of its
mails (the requester's notice, the approvers' summaries) goes out exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore
from gateway.access.mail import MailQueue
from gateway.access.notices import Notices
from gateway.access.sender import MailSender
from gateway.access.sweeper import Sweeper
from gateway.clock import ManualClock
from gateway.config import Smtp
from gateway.identity import Principal
from tests.gateway.access.conftest import ALICE, ORG, SAM, SUE
from tests.gateway.access.smtp import Inbox

CONSOLE = "https://gateway.localhost:8443"


@dataclass
class Instance:
    store: AccessStore
    sweeper: Sweeper
    notices: Notices
    sender: MailSender

    async def round(self) -> None:
        await self.sweeper.sweep_once()
        await self.notices.process_once()
        await self.sender.send_due()


@pytest.fixture
async def instances(
    directory: aioredis.Redis, redis_url: str, clock: ManualClock, smtp_inbox: tuple[Inbox, int]
) -> AsyncIterator[list[Instance]]:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    made = []
    for client in clients:
        store = AccessStore(client, clock)
        queue = MailQueue(client, clock)
        made.append(
            Instance(
                store,
                Sweeper(store),
                Notices(client, store, queue, console_url=CONSOLE, audit=None),
                MailSender(queue, Smtp(port=smtp_inbox[1], security="plain")),
            )
        )
    yield made
    for client in clients:
        await client.aclose()


async def file(store: AccessStore, who: Principal, duration_s: int) -> str:
    request = await store.file(
        who,
        org=ORG,
        member="bob",
        justification="ticket 77: reports are empty",
        duration_s=duration_s,
        scope="read",
    )
    return request.id


async def test_lapse_and_expiry_mail_once_with_two_instances_sweeping(
    instances: list[Instance],
    smtp_inbox: tuple[Inbox, int],
    clock: ManualClock,
    redis: aioredis.Redis,
) -> None:
    found, _ = smtp_inbox
    first, second = instances
    expiring = await file(first.store, SAM, 900)
    await first.store.approve(expiring, ALICE)
    lapsing = await file(second.store, SUE, 900)
    for _ in range(2):
        await asyncio.gather(*(i.round() for i in instances))
    found.messages.clear()
    clock.advance(12 * 3600 + 1)  # past the grant's end and the request's lapse
    for _ in range(3):  # both instances, at the same moments, a few times over
        await asyncio.gather(*(i.round() for i in instances))
    subjects = Counter((m["To"], m["Subject"]) for m in found.messages)
    assert all(n == 1 for n in subjects.values()), subjects
    assert [s for to, s in subjects if to == "sam@vendor.example"] == [
        "Access request expired: acme/bob"
    ]
    assert [s for to, s in subjects if to == "sue@vendor.example"] == [
        "Access request lapsed: acme/bob"
    ]
    summaries = sorted(to for to, subject in subjects if subject.startswith("Access ended"))
    assert summaries == ["alice@acme.example", "carol@acme.example", "erin@acme.example"]
    for request_id, state in ((expiring, "expired"), (lapsing, "lapsed")):
        stored = await redis.hget(keys.access_request(request_id), "state")
        assert stored == state.encode()
    assert await redis.zcard(keys.mail_queue()) == 0
