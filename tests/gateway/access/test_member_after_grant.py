"""A member disabled or marked not impersonable after a grant was approved is never acted
as again: every check refuses (`member_not_impersonable`), cached or not. The grant itself
is not ended: it is refused at check time, and acts again if the member is restored
before it ends (its approvers may still revoke it)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessStore, load_settings, save_settings
from gateway.accounts import Accounts, PasswordHasher, open_accounts
from gateway.clock import ManualClock
from tests.gateway.access.conftest import BOB, ORG, SAM, approved
from tests.gateway.access.test_grant_stage import Running, running
from tests.gateway.proxyharness import HOST

__all__ = ["running"]  # the running-gateway fixture of the grant-stage tests


@pytest.fixture
def accounts(directory: aioredis.Redis, clock: ManualClock, tmp_path: Path) -> Accounts:
    return open_accounts(directory, clock, tmp_path / "keys", hasher=PasswordHasher(log2_n=10))


async def _mark_bob(accounts: Accounts, *, impersonable: bool) -> None:
    await accounts.store.put_member(
        ORG, BOB.id, BOB.email, BOB.name, "member", impersonable=impersonable, create=False
    )


async def test_check_refuses_once_the_member_is_not_impersonable(
    store: AccessStore, accounts: Accounts
) -> None:
    rid = await approved(store)
    assert (await store.check_grant(SAM.key, ORG)).grant is not None
    await _mark_bob(accounts, impersonable=False)
    check = await store.check_grant(SAM.key, ORG)
    assert check.grant is None
    assert check.error == "member_not_impersonable"
    assert "bob" in check.reason
    # Refused, not ended: the request is still approved, and acts again once restored.
    assert (await store.require(rid)).state.value == "approved"
    await _mark_bob(accounts, impersonable=True)
    restored = await store.check_grant(SAM.key, ORG)
    assert restored.grant is not None
    assert restored.grant.grant_id == rid


async def test_check_refuses_a_disabled_or_vanished_member(
    store: AccessStore, accounts: Accounts, directory: aioredis.Redis
) -> None:
    await approved(store)
    await accounts.store.set_disabled(BOB.key, True)
    assert (await store.check_grant(SAM.key, ORG)).error == "member_not_impersonable"
    await accounts.store.set_disabled(BOB.key, False)
    assert (await store.check_grant(SAM.key, ORG)).grant is not None
    await directory.delete(keys.member(ORG, BOB.id))
    assert (await store.check_grant(SAM.key, ORG)).error == "member_not_impersonable"


async def test_the_running_gateway_refuses_at_once_even_when_cached(
    running: Running, store: AccessStore, accounts: Accounts
) -> None:
    await approved(store)
    assert (await running.get())[0] == 200
    assert (await running.get())[0] == 200  # served from the watcher's cache
    assert running.watcher.healthy
    await _mark_bob(accounts, impersonable=False)
    status, body = await running.get()
    assert (status, body["error"]) == (403, "member_not_impersonable")
    assert len(running.upstream.received) == 2
    await _mark_bob(accounts, impersonable=True)
    assert (await running.get())[0] == 200
    await accounts.store.set_disabled(BOB.key, True)
    status, body = await running.get()
    assert (status, body["error"]) == (403, "member_not_impersonable")
    assert len(running.upstream.received) == 3


async def test_disabling_the_member_ends_an_in_flight_response(
    running: Running, store: AccessStore, accounts: Accounts
) -> None:
    await approved(store)
    async with running.session.get(running.url + "/hang", headers={"Host": HOST}) as response:
        assert response.status == 200
        assert await response.content.readexactly(7) == b"partial"
        await accounts.store.set_disabled(BOB.key, True)
        # Well inside the route's read timeout (1.5 s), which would end it anyway.
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async with asyncio.timeout(1.0):
                await response.content.read()


async def test_a_member_made_admin_is_refused_unless_the_org_allows_admins(
    running: Running, store: AccessStore, accounts: Accounts, directory: aioredis.Redis
) -> None:
    await approved(store)
    assert (await running.get())[0] == 200
    assert (await running.get())[0] == 200  # served from the watcher's cache
    await accounts.store.put_member(ORG, BOB.id, BOB.email, BOB.name, "admin", create=False)
    status, body = await running.get()
    assert (status, body["error"]) == (403, "member_not_impersonable")
    assert "admin" in str(body["reason"])
    # The org changes its mind: admins may be acted as; cached answers follow at once.
    settings = await load_settings(directory, ORG)
    await save_settings(directory, ORG, replace(settings, admins_impersonable=True))
    assert (await running.get())[0] == 200
    await save_settings(directory, ORG, replace(settings, admins_impersonable=False))
    status, body = await running.get()
    assert (status, body["error"]) == (403, "member_not_impersonable")
    assert len(running.upstream.received) == 3
