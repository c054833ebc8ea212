"""One person, several accounts: accounts linked by the directory's `person` id are one person.

Nobody approves or denies a request through another account of their own, approvals count
each person once, and the links are read at decision time from the accounts as stored.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from functools import partial
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import (
    AccessConflict,
    AccessForbidden,
    AccessStore,
    OrgSettings,
    RequestState,
    save_settings,
)
from gateway.access.directory import account_key, set_approvers, who
from gateway.access.mail import MailQueue
from gateway.access.notices import Notices
from gateway.clock import ManualClock
from gateway.identity import Principal
from tests.gateway.access.conftest import (
    ALICE,
    CAROL,
    ERIN,
    FRANK,
    ORG,
    SAM,
    SUE,
    member,
    write_account,
)
from tests.gateway.access.test_races import approved_at_once, codes, together

ROUNDS = 30


async def link(redis: aioredis.Redis, person: str, *accounts: Principal) -> None:
    """Mark `accounts` as one person, as the directory import stores it."""
    for account in accounts:
        await write_account(redis, account, person=person)


async def unlink(redis: aioredis.Redis, who: Principal) -> None:
    account = keys.staff(who.id) if who.org is None else keys.member(who.org, who.id)
    await redis.hset(account, "person", "")


async def new_request(store: AccessStore, requester: Principal = SAM) -> str:
    request = await store.file(
        requester, org=ORG, member="bob", justification="ticket 12: the export is broken",
        duration_s=3600, scope="write",
    )  # fmt: skip
    return request.id


async def refused_as_self_approval(decision: Awaitable[object]) -> None:
    """The decision is refused: its account is the requester's person."""
    with pytest.raises(AccessForbidden) as refused:
        await decision
    assert refused.value.code == "self_approval"


async def two_needed_from_one_admin(directory: aioredis.Redis) -> None:
    """The org needs two approvals; Alice and Carol are accounts of one person."""
    await save_settings(directory, ORG, OrgSettings(approvals_required=2))
    await link(directory, "one.admin", ALICE, CAROL)


async def linked_after_two_approvals(store: AccessStore, directory: aioredis.Redis) -> str:
    """A request needing three approvals, approved by Alice and Carol, who are then linked
    as one person: two approvals given, one person's counted."""
    await save_settings(directory, ORG, OrgSettings(approvals_required=3))
    rid = await new_request(store)
    await store.approve(rid, ALICE)
    await store.approve(rid, CAROL)
    await link(directory, "one.admin", ALICE, CAROL)
    return rid


@pytest.fixture
def mail(directory: aioredis.Redis, clock: ManualClock) -> MailQueue:
    return MailQueue(directory, clock)


@pytest.fixture
def notices(directory: aioredis.Redis, store: AccessStore, mail: MailQueue) -> Notices:
    return Notices(directory, store, mail, console_url="https://console", audit=None)


async def actions(redis: aioredis.Redis, rid: str) -> list[str]:
    raw = await redis.lrange(keys.request_history(rid), 0, -1)
    return [str(json.loads(item)["action"]) for item in raw]


async def test_staff_cannot_approve_through_their_linked_admin_account(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await link(directory, "sam.person", SAM, ALICE)
    rid = await new_request(store)
    await refused_as_self_approval(store.approve(rid, ALICE))
    request = await store.require(rid)
    assert request.state is RequestState.PENDING
    assert request.approvals == ()
    assert await actions(directory, rid) == ["filed"]
    # Someone else may still approve it.
    assert (await store.approve(rid, CAROL)).state is RequestState.APPROVED


async def test_nor_deny_through_a_linked_account(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await link(directory, "sam.person", SAM, ALICE)
    rid = await new_request(store)
    await refused_as_self_approval(store.deny(rid, ALICE, comment="not needed"))
    assert (await store.require(rid)).state is RequestState.PENDING
    assert await actions(directory, rid) == ["filed"]


async def test_unlinked_accounts_decide_as_before(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    # Other people's links do not matter; an account without a person is its own person.
    await link(directory, "someone-else", CAROL, ERIN)
    rid = await new_request(store)
    assert (await store.approve(rid, ALICE)).state is RequestState.APPROVED
    other = await new_request(store, SUE)
    assert (await store.deny(other, CAROL, comment="no")).state is RequestState.DENIED


async def test_a_link_made_after_filing_counts_at_decision_time(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    rid = await new_request(store)
    await link(directory, "sam.person", SAM, ALICE)
    await refused_as_self_approval(store.approve(rid, ALICE))


async def test_a_link_removed_after_filing_no_longer_refuses(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await link(directory, "sam.person", SAM, ALICE)
    rid = await new_request(store)
    await unlink(directory, ALICE)
    assert (await store.approve(rid, ALICE)).state is RequestState.APPROVED


async def test_a_link_needs_both_accounts_to_name_the_person(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await link(directory, "sam.person", ALICE)  # Sam names no person: not linked
    rid = await new_request(store)
    assert (await store.approve(rid, ALICE)).state is RequestState.APPROVED


async def test_two_linked_approvers_count_once(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await two_needed_from_one_admin(directory)
    rid = await new_request(store)
    assert (await store.approve(rid, ALICE)).state is RequestState.PENDING
    with pytest.raises(AccessConflict) as refused:
        await store.approve(rid, CAROL)
    assert refused.value.code == "already_approved"
    request = await store.require(rid)
    assert request.state is RequestState.PENDING
    assert request.approvals == ("alice",)
    approved = await store.approve(rid, ERIN)
    assert approved.state is RequestState.APPROVED
    assert approved.approvals == ("alice", "erin")


async def test_a_linked_approval_that_no_longer_counts_does_not_block_the_person(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await two_needed_from_one_admin(directory)
    rid = await new_request(store)
    await store.approve(rid, ALICE)
    await set_approvers(directory, ORG, ["carol", "erin"])  # alice's approval counts no more
    after = await store.approve(rid, CAROL)
    assert after.state is RequestState.PENDING
    assert after.approvals == ("alice", "carol")
    assert (await store.approve(rid, ERIN)).state is RequestState.APPROVED


async def test_approvals_given_before_a_link_count_once_after_it(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    rid = await linked_after_two_approvals(store, directory)
    after = await store.approve(rid, ERIN)
    assert after.state is RequestState.PENDING  # alice and carol are one person: 2 of 3
    frank = member(ORG, "frank", "admin")
    await write_account(directory, frank)
    assert (await store.approve(rid, frank)).state is RequestState.APPROVED


async def test_an_approval_by_an_account_linked_to_the_requester_since_counts_for_nothing(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await save_settings(directory, ORG, OrgSettings(approvals_required=2))
    rid = await new_request(store)
    await store.approve(rid, ALICE)
    await link(directory, "sam.person", SAM, ALICE)
    assert (await store.approve(rid, CAROL)).state is RequestState.PENDING
    assert (await store.approve(rid, ERIN)).state is RequestState.APPROVED


async def test_a_partial_approval_event_counts_people(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    rid = await linked_after_two_approvals(store, directory)
    await store.approve(rid, ERIN)
    entries: Any = await directory.xrange(keys.access_outbox())
    counts = [
        (fields[b"actor"], fields[b"approvals"])
        for _, fields in entries
        if fields[b"event"] == b"approval"
    ]
    assert counts == [
        (b"member:acme:alice", b"1"),
        (b"member:acme:carol", b"2"),
        (b"member:acme:erin", b"2"),
    ]


async def test_two_linked_accounts_approving_at_once_count_once(
    stores: list[AccessStore], directory: aioredis.Redis
) -> None:
    await two_needed_from_one_admin(directory)
    a, b = stores[0], stores[1]
    for _ in range(ROUNDS):
        rid = await new_request(a)
        moves, request = await approved_at_once(a, b, rid)
        assert moves == ["already_approved", "ok"]
        assert request.state is RequestState.PENDING
        assert len(request.approvals) == 1
        await a.cancel(rid, SAM)


async def test_linked_requester_and_approver_at_once_never_approve(
    stores: list[AccessStore], directory: aioredis.Redis
) -> None:
    # The link is written while the approval runs: the approval is judged either before the
    # link (allowed) or after it (refused), never half-way.
    a, b = stores[0], stores[1]
    outcomes: set[str] = set()
    for _ in range(ROUNDS):
        await unlink(directory, ALICE)
        rid = await new_request(a)
        results = await together(
            partial(b.approve, rid, ALICE),
            partial(write_account, a.redis, ALICE, person="sam.person"),
            partial(write_account, a.redis, SAM, person="sam.person"),
        )
        [approval] = codes([results[0]])
        outcomes.add(approval)
        request = await a.require(rid)
        if approval == "ok":
            assert request.state is RequestState.APPROVED
            await a.revoke(rid, SAM)
        else:
            assert approval == "self_approval"
            assert request.state is RequestState.PENDING
            assert request.approvals == ()
            await a.cancel(rid, SAM)
        await unlink(directory, SAM)
    assert outcomes <= {"ok", "self_approval"}


async def test_the_linked_requester_is_not_asked_to_approve(
    store: AccessStore, directory: aioredis.Redis, mail: MailQueue, notices: Notices
) -> None:
    await link(directory, "sam.person", SAM, ALICE)
    await new_request(store)
    assert await notices.process_once() == 1
    assert sorted(m.to for m in await mail.waiting()) == [
        "carol@acme.example",
        "erin@acme.example",
    ]


async def test_partial_approval_mail_skips_every_account_of_who_approved(
    store: AccessStore, directory: aioredis.Redis, mail: MailQueue, notices: Notices
) -> None:
    await save_settings(directory, ORG, OrgSettings(approvals_required=2))
    await set_approvers(directory, ORG, ["alice", "carol", "erin", "frank"])
    await link(directory, "one.admin", ALICE, CAROL)
    await link(directory, "sam.person", SAM, FRANK)
    rid = await new_request(store)
    await notices.process_once()
    filed = {m.id for m in await mail.waiting()}
    await store.approve(rid, ALICE)
    assert await notices.process_once() == 1
    # carol is alice; frank is the requester: only erin is still to decide.
    assert [m.to for m in await mail.waiting() if m.id not in filed] == ["erin@acme.example"]


async def test_a_request_naming_no_readable_requester_is_decided_by_nobody(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    rid = await new_request(store)
    await directory.hset(keys.access_request(rid), "requester_key", "staff:a:b")
    for decide in (partial(store.approve, rid, ALICE), partial(store.deny, rid, ALICE, comment="")):
        with pytest.raises(AccessConflict) as refused:
            await decide()
        assert refused.value.code == "damaged_request"
    assert await actions(directory, rid) == ["filed"]


@pytest.mark.parametrize(
    ("principal_key", "expected"),
    [
        ("staff:sam", keys.staff("sam")),
        ("member:acme:alice", keys.member("acme", "alice")),
        ("staff:a:b", None),
        ("member:acme", None),
        ("member:ac me:alice", None),
        ("staff:", None),
        ("robot:x", None),
        ("", None),
    ],
)
def test_account_key_reads_only_well_formed_principal_keys(
    principal_key: str, expected: str | None
) -> None:
    assert account_key(principal_key) == expected


def test_a_person_and_an_account_never_pass_for_each_other() -> None:
    assert who("staff:sam", "x") == who("member:acme:alice", "x")
    assert who("staff:sam", "") != who("member:acme:sam", "")
    assert who("staff:sam", "") != who("member:acme:alice", "staff:sam")
