"""A customer admin's impersonation lasts only while the admin is still an enabled admin."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore
from gateway.access.events import member_changed
from gateway.access.watcher import GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows
from tests.gateway.access.conftest import ALICE, ORG, SAM, approved
from tests.gateway.access.trust import trusted


async def test_an_admin_demoted_mid_impersonation_acts_as_nobody(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await store.impersonate(ALICE, member="bob", duration_s=600)
    assert (await store.check_grant(ALICE.key, ORG)).grant is not None
    await directory.hset(keys.member(ORG, "alice"), "role", "member")
    check = await store.check_grant(ALICE.key, ORG)
    assert check.grant is None
    assert check.error == "not_admin"


async def test_an_admin_disabled_or_gone_mid_impersonation_acts_as_nobody(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await store.impersonate(ALICE, member="bob", duration_s=600)
    await directory.hset(keys.member(ORG, "alice"), "disabled", "1")
    assert (await store.check_grant(ALICE.key, ORG)).error == "not_admin"
    await directory.delete(keys.member(ORG, "alice"))
    assert (await store.check_grant(ALICE.key, ORG)).error == "not_admin"


async def test_a_staff_grant_does_not_depend_on_any_admin_account(
    store: AccessStore, directory: aioredis.Redis
) -> None:
    await approved(store)
    await directory.hset(keys.member(ORG, "alice"), "role", "member")  # the approver
    assert (await store.check_grant(SAM.key, ORG)).grant is not None


async def test_a_cached_impersonation_ends_when_the_admin_is_demoted(
    store: AccessStore, directory: aioredis.Redis, clock: ManualClock
) -> None:
    await store.impersonate(ALICE, member="bob", duration_s=600)
    watcher = GrantWatcher(directory, clock, InFlightFlows())
    listening = asyncio.create_task(watcher.run())
    try:
        await trusted(watcher)
        assert (await watcher.check(ALICE.key, ORG)).grant is not None  # now cached
        # As the account store demotes her: the write and its event in one step.
        channel, message = member_changed(ORG, "alice")
        await directory.hset(keys.member(ORG, "alice"), "role", "member")
        await directory.publish(channel, message)
        async with asyncio.timeout(15):
            while (await watcher.check(ALICE.key, ORG)).grant is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert (await watcher.check(ALICE.key, ORG)).error == "not_admin"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
