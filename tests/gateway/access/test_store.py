"""Every transition of the access workflow against a real Redis, time driven by the test clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import (
    AccessConflict,
    AccessForbidden,
    AccessInvalid,
    AccessNotFound,
    AccessRequest,
    AccessStore,
    AccessUnavailable,
    OrgSettings,
    RequestKind,
    RequestState,
    save_settings,
)
from gateway.access.directory import approvers, set_approvers
from gateway.access.watcher import GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows
from gateway.identity import Principal
from policies.model import Scope
from tests.gateway.access.conftest import (
    ALICE,
    BOB,
    CAROL,
    ERIN,
    FRANK,
    GINA,
    ORG,
    SAM,
    SUE,
)
from tests.gateway.access.smtp import free_port

JUSTIFICATION = "Customer ticket 4711: invoices do not render"


async def file(store: AccessStore, who: Principal = SAM, **overrides: object) -> AccessRequest:
    body: dict[str, object] = {
        "org": ORG,
        "member": "bob",
        "justification": JUSTIFICATION,
        "duration_s": 3600,
        "scope": "write",
    }
    body.update(overrides)
    return await store.file(
        who,
        org=body["org"],
        member=body["member"],
        justification=body["justification"],
        duration_s=body["duration_s"],
        scope=body["scope"],
    )


async def snapshot(redis: aioredis.Redis) -> dict[object, object]:
    """Every key with its type: bad input must leave this unchanged."""
    out: dict[object, object] = {}
    for key in await redis.keys("*"):
        out[key] = await redis.type(key)
    return out


async def test_file_stores_a_pending_request_with_history(
    store: AccessStore, clock: ManualClock
) -> None:
    request = await file(store)
    assert request.state is RequestState.PENDING
    assert request.kind is RequestKind.REQUEST
    assert (request.org, request.member, request.requester.key) == (ORG, "bob", SAM.key)
    assert request.lapses_at == pytest.approx(clock.now() + 12 * 3600)
    assert request.approvals_required == 1
    history = await store.history(request.id)
    assert [h.action for h in history] == ["filed"]
    assert history[0].actor == SAM.key
    assert (await store.check_grant(SAM.key, ORG)).error == "no_grant"


async def test_approve_starts_the_grant_at_approval(store: AccessStore, clock: ManualClock) -> None:
    request = await file(store)
    clock.advance(100)
    approved = await store.approve(request.id, ALICE, comment="ok")
    assert approved.state is RequestState.APPROVED
    assert approved.starts_at == pytest.approx(clock.now())
    assert approved.expires_at == pytest.approx(clock.now() + 3600)
    check = await store.check_grant(SAM.key, ORG)
    assert check.error is None
    assert check.grant is not None
    assert check.grant.grant_id == request.id
    assert (check.grant.member_id, check.grant.scope, check.grant.actor) == (
        "bob",
        Scope.WRITE,
        SAM,
    )
    actions = [(h.action, h.actor, h.comment) for h in await store.history(request.id)]
    assert actions == [
        ("filed", SAM.key, JUSTIFICATION),
        ("approval", ALICE.key, "ok"),
        ("approved", ALICE.key, ""),
    ]


async def test_deny_ends_the_request(store: AccessStore) -> None:
    request = await file(store)
    denied = await store.deny(request.id, ALICE, comment="not now")
    assert denied.state is RequestState.DENIED
    assert denied.ended_by == ALICE.key
    with pytest.raises(AccessConflict) as caught:
        await store.approve(request.id, CAROL)
    assert caught.value.code == "wrong_state"


async def test_cancel_by_the_requester_only(store: AccessStore) -> None:
    request = await file(store)
    with pytest.raises(AccessNotFound):
        await store.cancel(request.id, SUE)
    cancelled = await store.cancel(request.id, SAM)
    assert cancelled.state is RequestState.CANCELLED
    with pytest.raises(AccessConflict):
        await store.cancel(request.id, SAM)


async def test_revoke_by_an_approver_who_approved_or_not(store: AccessStore) -> None:
    request = await file(store)
    await store.approve(request.id, ALICE)
    revoked = await store.revoke(request.id, CAROL, comment="enough")
    assert revoked.state is RequestState.REVOKED
    check = await store.check_grant(SAM.key, ORG)
    assert (check.grant, check.error) == (None, "grant_revoked")
    with pytest.raises(AccessConflict) as caught:
        await store.revoke(request.id, ALICE)
    assert caught.value.code == "wrong_state"


async def test_requester_ends_the_grant_early(store: AccessStore) -> None:
    request = await file(store)
    await store.approve(request.id, ALICE)
    assert (await store.revoke(request.id, SAM)).state is RequestState.REVOKED


async def test_revoke_refused_to_members_and_other_orgs(store: AccessStore) -> None:
    request = await file(store)
    await store.approve(request.id, ALICE)
    with pytest.raises(AccessForbidden):
        await store.revoke(request.id, BOB)
    with pytest.raises(AccessNotFound):
        await store.revoke(request.id, GINA)
    with pytest.raises(AccessNotFound):
        await store.revoke(request.id, SUE)
    assert (await store.require(request.id)).state is RequestState.APPROVED


async def test_revoking_a_pending_request_is_wrong_state(store: AccessStore) -> None:
    request = await file(store)
    with pytest.raises(AccessConflict):
        await store.revoke(request.id, ALICE)


async def test_lapse_by_the_clock(store: AccessStore, clock: ManualClock) -> None:
    request = await file(store)
    clock.advance(12 * 3600 - 1)
    assert await store.due() == ([], [])
    clock.advance(1)
    assert await store.due() == ([request.id], [])
    assert await store.sweep(request.id) == "lapsed"
    assert (await store.require(request.id)).state is RequestState.LAPSED
    assert await store.due() == ([], [])


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("approve", "the request lapsed before it was decided"),
        ("deny", "the request lapsed before it was decided"),
        ("cancel", "the request lapsed before it was cancelled"),
    ],
)
async def test_deciding_after_the_lapse_time_lapses_it(
    store: AccessStore, clock: ManualClock, action: str, reason: str
) -> None:
    request = await file(store)
    clock.advance(12 * 3600)
    decisions: dict[str, Callable[[], Awaitable[AccessRequest]]] = {
        "approve": lambda: store.approve(request.id, ALICE),
        "deny": lambda: store.deny(request.id, ALICE, comment="late"),
        "cancel": lambda: store.cancel(request.id, SAM),
    }
    decide = decisions[action]
    with pytest.raises(AccessConflict) as caught:
        await decide()
    assert (caught.value.code, caught.value.reason) == ("wrong_state", reason)
    assert (await store.require(request.id)).state is RequestState.LAPSED


async def test_expiry_by_the_clock_on_every_check(store: AccessStore, clock: ManualClock) -> None:
    request = await file(store, duration_s=600)
    await store.approve(request.id, ALICE)
    clock.advance(599)
    assert (await store.check_grant(SAM.key, ORG)).grant is not None
    clock.advance(1)
    # Not yet swept: the clock alone already denies.
    assert (await store.check_grant(SAM.key, ORG)).error == "grant_expired"
    assert await store.due() == ([], [request.id])
    assert await store.sweep(request.id) == "expired"
    assert (await store.require(request.id)).state is RequestState.EXPIRED
    assert (await store.check_grant(SAM.key, ORG)).error == "grant_expired"
    with pytest.raises(AccessConflict):
        await store.revoke(request.id, ALICE)


async def test_self_approval_refused(store: AccessStore, directory: aioredis.Redis) -> None:
    request = await file(store)
    with pytest.raises(AccessForbidden) as caught:
        await store.approve(request.id, SAM)
    assert caught.value.code == "self_approval"
    assert caught.value.reason == "nobody decides their own request"
    with pytest.raises(AccessNotFound):
        await store.approve(request.id, SUE)
    assert (await store.require(request.id)).state is RequestState.PENDING


async def test_customer_admin_cannot_approve_own_impersonation(store: AccessStore) -> None:
    grant = await store.impersonate(ALICE, member="bob", duration_s=600)
    assert grant.state is RequestState.APPROVED
    with pytest.raises(AccessConflict):
        await store.approve(grant.id, ALICE)


async def test_only_approvers_of_the_org_decide(store: AccessStore) -> None:
    request = await file(store)
    with pytest.raises(AccessForbidden) as caught:
        await store.approve(request.id, BOB)
    assert caught.value.code == "not_approver"
    with pytest.raises(AccessNotFound):
        await store.approve(request.id, GINA)
    with pytest.raises(AccessNotFound):
        await store.deny(request.id, GINA, comment="no")
    assert (await store.require(request.id)).state is RequestState.PENDING


async def test_explicit_approvers_list_replaces_admins(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    assert [m.id for m in await approvers(directory, ORG)] == ["alice", "carol", "erin"]
    await set_approvers(directory, ORG, ["frank"])
    assert [m.id for m in await approvers(directory, ORG)] == ["frank"]
    request = await file(store)
    with pytest.raises(AccessForbidden):
        await store.approve(request.id, ALICE)
    # The list in force at decision time counts: edit it after filing.
    await set_approvers(directory, ORG, ["carol"])
    with pytest.raises(AccessForbidden):
        await store.approve(request.id, FRANK)
    assert (await store.approve(request.id, CAROL)).state is RequestState.APPROVED
    await set_approvers(directory, ORG, [])
    assert [m.id for m in await approvers(directory, ORG)] == ["alice", "carol", "erin"]


async def test_approvers_list_must_name_members(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    with pytest.raises(AccessInvalid):
        await set_approvers(directory, ORG, ["gina"])
    with pytest.raises(AccessInvalid):
        await set_approvers(directory, ORG, ["bad:id"])
    with pytest.raises(AccessNotFound):
        await set_approvers(directory, "nope", ["alice"])
    assert not await directory.exists(keys.org_approvers(ORG))


async def test_n_of_m_shortest_duration_narrowest_scope(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    await save_settings(directory, ORG, OrgSettings(approvals_required=3))
    request = await file(store, duration_s=7200, scope="write")
    assert request.approvals_required == 3
    after_one = await store.approve(request.id, ALICE, duration_s=3600)
    assert (after_one.state, after_one.duration_s, after_one.scope) == (
        RequestState.PENDING,
        3600,
        Scope.WRITE,
    )
    with pytest.raises(AccessConflict) as caught:
        await store.approve(request.id, ALICE)
    assert caught.value.code == "already_approved"
    clock.advance(50)
    after_two = await store.approve(request.id, CAROL, duration_s=5400, scope="read")
    assert (after_two.state, after_two.duration_s, after_two.scope) == (
        RequestState.PENDING,
        3600,
        Scope.READ,
    )
    assert (await store.check_grant(SAM.key, ORG)).error == "no_grant"
    clock.advance(50)
    final = await store.approve(request.id, ERIN, scope="write")
    assert final.state is RequestState.APPROVED
    assert (final.duration_s, final.scope) == (3600, Scope.READ)
    assert final.starts_at == pytest.approx(clock.now())
    assert final.expires_at == pytest.approx(clock.now() + 3600)
    assert final.approvals == ("alice", "carol", "erin")


async def test_approver_may_not_widen(store: AccessStore) -> None:
    request = await file(store, scope="read", duration_s=600)
    with pytest.raises(AccessInvalid) as caught:
        await store.approve(request.id, ALICE, scope="write")
    assert caught.value.code == "invalid_scope"
    with pytest.raises(AccessInvalid) as caught:
        await store.approve(request.id, ALICE, duration_s=601)
    assert caught.value.code == "invalid_duration"
    assert (await store.require(request.id)).approvals == ()


async def test_one_live_grant_per_staff_and_org(store: AccessStore) -> None:
    first = await file(store)
    second = await file(store)
    await store.approve(first.id, ALICE)
    with pytest.raises(AccessConflict) as caught:
        await file(store)
    assert caught.value.code == "live_grant_exists"
    with pytest.raises(AccessConflict) as caught:
        await store.approve(second.id, ALICE)
    assert caught.value.code == "live_grant_exists"
    assert (await store.require(second.id)).approvals == ()
    await store.revoke(first.id, SAM)
    assert (await store.approve(second.id, ALICE)).state is RequestState.APPROVED


async def test_revoke_all_ends_every_live_grant_of_the_org(
    store: AccessStore, clock: ManualClock
) -> None:
    one = await file(store, SAM)
    two = await file(store, SUE, member="frank")
    pending = await file(store, SAM, member="frank")
    await store.approve(one.id, ALICE)
    await store.approve(two.id, CAROL)
    with pytest.raises(AccessForbidden):
        await store.revoke_all(ORG, BOB)
    with pytest.raises(AccessNotFound):
        await store.revoke_all(ORG, GINA)
    revoked = await store.revoke_all(ORG, ALICE, comment="incident")
    assert revoked == sorted([one.id, two.id])
    for rid in (one.id, two.id):
        assert (await store.require(rid)).state is RequestState.REVOKED
    assert (await store.require(pending.id)).state is RequestState.PENDING
    assert await store.revoke_all(ORG, ALICE) == []


async def test_impersonation_by_a_customer_admin(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    grant = await store.impersonate(ALICE, member="bob", duration_s=900)
    assert (grant.kind, grant.state, grant.requester) == (
        RequestKind.IMPERSONATION,
        RequestState.APPROVED,
        ALICE,
    )
    check = await store.check_grant(ALICE.key, ORG)
    assert check.grant is not None
    assert check.grant.member_id == "bob"
    with pytest.raises(AccessInvalid):
        await store.impersonate(ALICE, member="carol", duration_s=60)
    with pytest.raises(AccessInvalid):
        await store.impersonate(ALICE, member="dave", duration_s=60)
    with pytest.raises(AccessForbidden):
        await store.impersonate(BOB, member="frank", duration_s=60)
    with pytest.raises(AccessForbidden):
        await store.impersonate(SAM, member="frank", duration_s=60)
    with pytest.raises(AccessInvalid):
        await store.impersonate(GINA, member="bob", duration_s=60)
    with pytest.raises(AccessInvalid):
        await store.impersonate(CAROL, member="bob", duration_s=14401)
    await save_settings(directory, ORG, OrgSettings(admins_impersonable=True))
    other = await store.impersonate(CAROL, member="erin", duration_s=60)
    assert other.state is RequestState.APPROVED


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"justification": ""}, "justification_too_short"),
        ({"justification": "short"}, "justification_too_short"),
        ({"justification": None}, "invalid_justification"),
        ({"justification": "x" * 3000}, "invalid_justification"),
        ({"duration_s": 0}, "invalid_duration"),
        ({"duration_s": -5}, "invalid_duration"),
        ({"duration_s": "3600"}, "invalid_duration"),
        ({"duration_s": 1.5}, "invalid_duration"),
        ({"duration_s": True}, "invalid_duration"),
        ({"duration_s": 14401}, "duration_too_long"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"scope": None}, "invalid_scope"),
        ({"org": "nope"}, "unknown_org"),
        ({"org": "a:b"}, "invalid_org"),
        ({"org": 5}, "invalid_org"),
        ({"member": "nobody"}, "unknown_member"),
        ({"member": "x" * 65}, "invalid_member"),
        ({"member": "dave"}, "member_not_impersonable"),
        ({"member": "alice"}, "admin_not_impersonable"),
        ({"member": "hank"}, "unknown_member"),
    ],
)
async def test_bad_requests_change_nothing(
    store: AccessStore, directory: aioredis.Redis, overrides: dict[str, object], code: str
) -> None:
    before = await snapshot(directory)
    with pytest.raises(AccessInvalid) as caught:
        await file(store, SAM, **overrides)
    assert caught.value.code == code
    assert await snapshot(directory) == before


async def test_ticket_rule(store: AccessStore, directory: aioredis.Redis) -> None:
    await save_settings(directory, ORG, OrgSettings(ticket_pattern=r"\bSUP-[0-9]+\b"))
    with pytest.raises(AccessInvalid) as caught:
        await file(store, justification="please let me look at the invoices")
    assert caught.value.code == "ticket_required"
    request = await file(store, justification="SUP-12 invoices do not render")
    assert request.state is RequestState.PENDING


async def test_members_cannot_file(store: AccessStore) -> None:
    with pytest.raises(AccessForbidden):
        await file(store, BOB)


async def test_search_by_org_requester_state_and_time(
    store: AccessStore, clock: ManualClock
) -> None:
    first = await file(store, SAM)
    clock.advance(100)
    second = await file(store, SUE, member="frank")
    await store.deny(second.id, ALICE, comment="no")
    clock.advance(100)
    third = await file(store, SAM, member="frank")
    by_org = await store.search(org=ORG)
    assert [r.id for r in by_org] == [third.id, second.id, first.id]
    assert [r.id for r in await store.search(requester=SAM)] == [third.id, first.id]
    denied = await store.search(org=ORG, state=RequestState.DENIED)
    assert [r.id for r in denied] == [second.id]
    start = first.created_at
    window = await store.search(org=ORG, since=start + 50, until=start + 150)
    assert [r.id for r in window] == [second.id]


async def test_settings_validation_reports_every_problem() -> None:
    with pytest.raises(AccessInvalid) as caught:
        OrgSettings().merged(
            {"max_duration_s": 0, "approvals_required": "2", "ticket_pattern": "(", "nope": 1}
        )
    reason = caught.value.reason
    for name in ("max_duration_s", "approvals_required", "ticket_pattern", "nope"):
        assert name in reason
    merged = OrgSettings().merged({"approvals_required": 2, "ticket_pattern": "T-[0-9]+"})
    assert (merged.approvals_required, merged.ticket_pattern) == (2, "T-[0-9]+")


async def test_events_are_published_and_kept_in_the_outbox(
    store: AccessStore, directory: aioredis.Redis, redis_url: str
) -> None:
    listener: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(keys.grant_events_channel())
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    request = await file(store)
    await store.approve(request.id, ALICE)
    await store.revoke(request.id, ALICE)
    seen = []
    for _ in range(4):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert message is not None
        seen.append(message["data"])
    await pubsub.unsubscribe()
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await listener.aclose()
    assert [b'"event":"filed"' in s for s in seen] == [True, False, False, False]
    assert any(b'"event":"revoked"' in s for s in seen)
    outbox = await directory.xrange(keys.access_outbox())
    events = [fields[b"event"] for _, fields in outbox or [] if fields]
    assert events == [b"filed", b"approval", b"approved", b"revoked"]


async def test_settings_as_the_directory_import_stores_them(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await directory.hset(
        keys.org(ORG), "settings", '{"max_duration_s": 600, "approvals_required": 2}'
    )
    with pytest.raises(AccessInvalid) as caught:
        await file(store, duration_s=601)
    assert caught.value.code == "duration_too_long"
    request = await file(store, duration_s=600)
    assert request.approvals_required == 2


@pytest.mark.parametrize(
    "stored", ['{"max_duration_s": "long"}', "not json", "[1]", '{"unknown": 1}']
)
async def test_broken_stored_settings_refuse_filing(
    store: AccessStore, directory: aioredis.Redis, stored: str
) -> None:
    await directory.hset(keys.org(ORG), "settings", stored)
    with pytest.raises(AccessInvalid) as caught:
        await file(store)
    assert caught.value.code == "invalid_settings"
    assert await directory.zcard(keys.org_requests(ORG)) == 0


async def test_saving_settings_of_an_unknown_org_creates_nothing(
    directory: aioredis.Redis,
) -> None:
    with pytest.raises(AccessNotFound):
        await save_settings(directory, "nope", OrgSettings())
    assert not await directory.exists(keys.org("nope"))


async def test_approvals_of_removed_approvers_no_longer_count(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await save_settings(directory, ORG, OrgSettings(approvals_required=2))
    request = await file(store)
    await store.approve(request.id, ALICE)
    await set_approvers(directory, ORG, ["carol", "erin"])
    after_carol = await store.approve(request.id, CAROL)
    assert after_carol.state is RequestState.PENDING  # alice no longer counts
    after_erin = await store.approve(request.id, ERIN)
    assert after_erin.state is RequestState.APPROVED
    assert after_erin.approvals == ("alice", "carol", "erin")


async def test_redis_down_fails_closed(clock: ManualClock) -> None:
    dead: aioredis.Redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(AccessUnavailable):
            await file(AccessStore(dead, clock))
        with pytest.raises(AccessUnavailable):
            await GrantWatcher(dead, clock, InFlightFlows()).check(SAM.key, ORG)
    finally:
        await dead.aclose()
