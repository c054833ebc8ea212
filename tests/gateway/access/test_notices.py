"""Workflow events -> audit records and mail, end to end: real Redis, a real audit writer,
a real SMTP server, time driven by the test clock (the sweeper makes lapse and expiry)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit.errors import AuditUnavailable
from audit.frame import decode_frame
from audit.keys import KeyDirectory
from audit.writer import FRAME_FIELD, AuditWriter
from gateway import keys
from gateway.access import AccessStore, RequestState
from gateway.access.directory import set_approvers
from gateway.access.mail import MailQueue
from gateway.access.notices import Notices
from gateway.access.sender import MailSender
from gateway.access.sweeper import Sweeper
from gateway.clock import ManualClock
from gateway.config import Smtp
from tests.gateway.access.conftest import ALICE, CAROL, ORG, SAM, SUE
from tests.gateway.access.smtp import Inbox, free_port, start_smtp

CONSOLE = "https://gateway.localhost:8443"


@pytest.fixture
async def writer(
    redis: aioredis.Redis, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[AuditWriter]:
    signer = KeyDirectory(tmp_path / "audit-keys").ensure(clock.now())
    audit = AuditWriter(redis, signer, stream=keys.audit_stream(), now=clock.now)
    await audit.open()
    yield audit
    await audit.close()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp_port(inbox: Inbox) -> Iterator[int]:
    port = free_port()
    controller = start_smtp(inbox, port)
    yield port
    controller.stop()


@pytest.fixture
def queue(directory: aioredis.Redis, clock: ManualClock) -> MailQueue:
    return MailQueue(directory, clock)


@pytest.fixture
def sender(queue: MailQueue, smtp_port: int) -> MailSender:
    return MailSender(queue, Smtp(port=smtp_port, security="plain"))


@pytest.fixture
def notices(
    directory: aioredis.Redis, store: AccessStore, queue: MailQueue, writer: AuditWriter
) -> Notices:
    return Notices(directory, store, queue, console_url=CONSOLE, audit=writer.append)


async def audit_actions(redis: aioredis.Redis) -> list[str]:
    out = []
    entries: Any = await redis.xrange(keys.audit_stream())
    for _, fields in entries:
        body = decode_frame(fields[FRAME_FIELD]).decode_body()
        action = body.get("event", {}).get("action", "")
        if action.startswith("access."):
            out.append(action)
    return out


async def file(store: AccessStore, **extra: Any) -> str:
    request = await store.file(
        SAM,
        org=ORG,
        member="bob",
        justification="ticket 77: reports are empty",
        duration_s=extra.get("duration_s", 3600),
        scope="read",
    )
    return request.id


async def test_filed_request_mails_every_approver_with_a_console_link(
    store: AccessStore, notices: Notices, sender: MailSender, inbox: Inbox
) -> None:
    rid = await file(store)
    assert await notices.process_once() == 1
    assert await sender.send_due() == (3, 0)
    assert sorted(m["To"] for m in inbox.messages) == [
        "alice@acme.example",
        "carol@acme.example",
        "erin@acme.example",
    ]
    text = inbox.messages[0].get_payload()
    assert isinstance(text, str)
    assert f"{CONSOLE}/requests/{rid}" in text
    assert "ticket 77: reports are empty" in text
    assert "bob" in text
    assert "read" in text
    assert "approves nothing" in text


async def test_explicit_approvers_get_the_mail(
    store: AccessStore,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
    directory: aioredis.Redis,
) -> None:
    await set_approvers(directory, ORG, ["frank"])
    await file(store)
    await notices.process_once()
    await sender.send_due()
    assert [m["To"] for m in inbox.messages] == ["frank@acme.example"]


async def test_decision_mails_the_requester_and_is_audited(
    store: AccessStore,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
    directory: aioredis.Redis,
) -> None:
    rid = await file(store)
    await store.approve(rid, ALICE, comment="go ahead")
    assert await notices.process_once() == 3  # filed, approval, approved
    await sender.send_due()
    [to_sam] = inbox.to("sam@vendor.example")
    assert to_sam["Subject"] == "Access request approved: acme/bob"
    assert await audit_actions(directory) == ["access.filed", "access.approval", "access.approved"]
    assert await directory.xlen(keys.access_outbox()) == 0


async def test_deny_mails_the_requester(
    store: AccessStore, notices: Notices, sender: MailSender, inbox: Inbox
) -> None:
    rid = await file(store)
    await store.deny(rid, CAROL, comment="no ticket attached")
    await notices.process_once()
    await sender.send_due()
    [to_sam] = inbox.to("sam@vendor.example")
    assert "denied" in to_sam["Subject"]
    payload = to_sam.get_payload()
    assert isinstance(payload, str)
    assert "no ticket attached" in payload


async def test_lapse_by_the_test_clock_with_its_mail(
    store: AccessStore,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
    clock: ManualClock,
    directory: aioredis.Redis,
) -> None:
    rid = await file(store)
    sweeper = Sweeper(store)
    clock.advance(12 * 3600 - 1)
    assert await sweeper.sweep_once() == []
    clock.advance(1)
    assert await sweeper.sweep_once() == [(rid, "lapsed")]
    assert (await store.require(rid)).state is RequestState.LAPSED
    await notices.process_once()
    await sender.send_due()
    [to_sam] = inbox.to("sam@vendor.example")
    assert "lapsed" in to_sam["Subject"]
    assert "access.lapsed" in await audit_actions(directory)


async def test_expiry_by_the_test_clock_mails_requester_and_summary_to_approvers(
    store: AccessStore,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
    clock: ManualClock,
    directory: aioredis.Redis,
) -> None:
    rid = await file(store, duration_s=900)
    await store.approve(rid, ALICE)
    await directory.hincrby(keys.access_request(rid), "requests", 7)
    await notices.process_once()
    await sender.send_due()
    inbox.messages.clear()
    clock.advance(900)
    assert await Sweeper(store).sweep_once() == [(rid, "expired")]
    await notices.process_once()
    await sender.send_due()
    [to_sam] = inbox.to("sam@vendor.example")
    assert "expired" in to_sam["Subject"]
    summaries = [m for m in inbox.messages if m["Subject"].startswith("Access ended (expired)")]
    assert sorted(m["To"] for m in summaries) == [
        "alice@acme.example",
        "carol@acme.example",
        "erin@acme.example",
    ]
    text = summaries[0].get_payload()
    assert isinstance(text, str)
    assert "Requests made through the gateway: 7" in text
    assert "access.expired" in await audit_actions(directory)


async def test_smtp_down_never_blocks_or_loses_a_request(
    store: AccessStore,
    notices: Notices,
    queue: MailQueue,
    inbox: Inbox,
    clock: ManualClock,
) -> None:
    port = free_port()
    sender = MailSender(queue, Smtp(port=port, security="plain"), timeout_s=2)
    rid = await file(store)
    await notices.process_once()
    assert await sender.send_due() == (0, 3)
    # The request went on regardless of the outage.
    assert (await store.approve(rid, ALICE)).state is RequestState.APPROVED
    await notices.process_once()
    controller = start_smtp(inbox, port)
    try:
        clock.advance(30)
        assert await sender.send_due() == (4, 0)
    finally:
        controller.stop()
    assert len(inbox.messages) == 4
    assert await queue.waiting() == []


async def test_audit_outage_keeps_the_event_until_it_is_recorded(
    store: AccessStore,
    queue: MailQueue,
    writer: AuditWriter,
    directory: aioredis.Redis,
) -> None:
    down = True

    async def audit(body: Mapping[str, Any]) -> int:
        if down:
            raise AuditUnavailable("redis refused the frame")
        return await writer.append(body)

    notices = Notices(directory, store, queue, console_url=CONSOLE, audit=audit)
    await file(store)
    assert await notices.process_once() == 0
    assert await directory.xlen(keys.access_outbox()) == 1
    assert await queue.waiting() == []
    down = False
    assert await notices.process_once() == 1
    assert await audit_actions(directory) == ["access.filed"]
    assert len(await queue.waiting()) == 3
    assert await directory.xlen(keys.access_outbox()) == 0


async def test_a_dead_consumer_s_events_are_taken_over(
    store: AccessStore, queue: MailQueue, writer: AuditWriter, directory: aioredis.Redis
) -> None:
    first = Notices(directory, store, queue, console_url=CONSOLE, audit=None, consumer="a")
    await file(store)
    await first._ensure_group()
    # Consumer "a" reads the event and dies before acknowledging it.
    await directory.xreadgroup("notices", "a", {keys.access_outbox(): ">"}, count=10)
    second = Notices(directory, store, queue, console_url=CONSOLE, audit=writer.append)
    assert await second.process_once() == 0  # not stale yet: "a" may still be working
    pending: Any = await directory.xpending_range(keys.access_outbox(), "notices", "-", "+", 10)
    assert len(pending) == 1
    # Make it stale by asking with zero idle time: the second consumer takes it over.
    taken: Any = await directory.xclaim(
        keys.access_outbox(), "notices", second.consumer, 0, [pending[0]["message_id"]]
    )
    assert len(taken) == 1
    assert await second.process_once() == 1
    assert await audit_actions(directory) == ["access.filed"]


async def test_an_event_that_keeps_failing_does_not_hold_back_the_others(
    store: AccessStore, queue: MailQueue, writer: AuditWriter, directory: aioredis.Redis
) -> None:
    first = await file(store)

    async def audit(body: Mapping[str, Any]) -> int:
        if body["gateway"]["grant"]["id"] == first:
            raise AuditUnavailable("this one keeps failing")
        return await writer.append(body)

    notices = Notices(directory, store, queue, console_url=CONSOLE, audit=audit)
    assert await notices.process_once() == 0
    await store.file(
        SUE, org=ORG, member="frank", justification="ticket 78: slow pages",
        duration_s=600, scope="read",
    )  # fmt: skip
    assert await notices.process_once() == 1
    assert await audit_actions(directory) == ["access.filed"]
    assert await directory.xlen(keys.access_outbox()) == 1
