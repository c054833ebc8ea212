"""N-of-M approvals: an approval short of the number required is mailed to the approvers
who still have to decide, and the final one is not (the "approved" mail says it all)."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import Message

import pytest
import redis.asyncio as aioredis

from gateway.access import AccessStore, OrgSettings, RequestState, save_settings
from gateway.access.mail import MailQueue
from gateway.access.notices import Notices
from gateway.access.sender import MailSender
from gateway.clock import ManualClock
from gateway.config import Smtp
from tests.gateway.access.conftest import ALICE, CAROL, ERIN, ORG, SAM
from tests.gateway.access.smtp import Inbox, free_port, start_smtp

CONSOLE = "https://gateway.localhost:8443"


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def sender(inbox: Inbox, directory: aioredis.Redis, clock: ManualClock) -> Iterator[MailSender]:
    port = free_port()
    controller = start_smtp(inbox, port)
    yield MailSender(MailQueue(directory, clock), Smtp(port=port, security="plain"))
    controller.stop()


@pytest.fixture
def notices(directory: aioredis.Redis, store: AccessStore, clock: ManualClock) -> Notices:
    return Notices(directory, store, MailQueue(directory, clock), console_url=CONSOLE, audit=None)


async def _filed(store: AccessStore, directory: aioredis.Redis, required: int) -> str:
    await save_settings(directory, ORG, OrgSettings(approvals_required=required))
    request = await store.file(
        SAM, org=ORG, member="bob", justification="ticket 77: reports are empty",
        duration_s=3600, scope="read",
    )  # fmt: skip
    return request.id


def _body(message: Message) -> str:
    payload = message.get_payload()
    assert isinstance(payload, str)
    return payload


async def test_one_of_two_is_mailed_to_the_approvers_still_to_decide(
    store: AccessStore,
    directory: aioredis.Redis,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
) -> None:
    rid = await _filed(store, directory, 2)
    await notices.process_once()
    await sender.send_due()
    inbox.messages.clear()
    await store.approve(rid, ALICE, comment="fine by me")
    assert await notices.process_once() == 1
    await sender.send_due()
    assert sorted(m["To"] for m in inbox.messages) == ["carol@acme.example", "erin@acme.example"]
    message = inbox.messages[0]
    assert message["Subject"] == "Access request: 1 of 2 approvals (sam -> acme/bob)"
    text = _body(message)
    assert "1 of 2 approvals given by Alice" in text
    assert "fine by me" in text
    assert f"{CONSOLE}/requests/{rid}" in text
    # The second, final approval: the requester hears "approved"; no "2 of 2" mail.
    inbox.messages.clear()
    assert (await store.approve(rid, CAROL)).state is RequestState.APPROVED
    await notices.process_once()
    await sender.send_due()
    assert [m["To"] for m in inbox.messages] == ["sam@vendor.example"]
    assert inbox.messages[0]["Subject"] == "Access request approved: acme/bob"


async def test_two_of_three_names_the_count(
    store: AccessStore,
    directory: aioredis.Redis,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
) -> None:
    rid = await _filed(store, directory, 3)
    await store.approve(rid, ALICE)
    await store.approve(rid, ERIN)
    await notices.process_once()
    await sender.send_due()
    partial = [m for m in inbox.messages if "approvals (" in m["Subject"]]
    # Both were handled after erin approved too: only carol still has to decide.
    assert sorted((m["Subject"][16:22], m["To"]) for m in partial) == [
        ("1 of 3", "carol@acme.example"),
        ("2 of 3", "carol@acme.example"),
    ]


async def test_a_request_decided_since_gets_no_partial_mail(
    store: AccessStore,
    directory: aioredis.Redis,
    notices: Notices,
    sender: MailSender,
    inbox: Inbox,
) -> None:
    rid = await _filed(store, directory, 2)
    await store.approve(rid, ALICE)
    await store.deny(rid, CAROL, comment="no")
    await notices.process_once()
    await sender.send_due()
    assert not [m for m in inbox.messages if "approvals (" in m["Subject"]]
    assert [m["To"] for m in inbox.messages if "denied" in m["Subject"]] == ["sam@vendor.example"]
