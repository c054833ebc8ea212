"""Account and org changes publish their grant event in the same atomic step as the write:
delivered with the write, issued by the write's own script, never for a failed write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway import keys
from gateway.access.settings import OrgSettings, save_settings
from gateway.accounts import Accounts
from gateway.accounts.errors import AccountConflict, AccountNotFound

BOB_KEY = "member:acme:bob"


class Listener:
    """A subscriber to the grant channel on its own connection."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.pubsub = client.pubsub()

    async def next(self, wait_s: float = 2.0) -> dict[str, Any] | None:
        message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=wait_s)
        return None if message is None else dict(json.loads(message["data"]))


@pytest.fixture
async def listener(redis_url: str) -> AsyncIterator[Listener]:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    listener = Listener(client)
    await listener.pubsub.subscribe(keys.grant_events_channel())
    confirmation = await listener.pubsub.get_message(timeout=2.0)
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    yield listener
    await listener.pubsub.unsubscribe()
    await listener.pubsub.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()


@pytest.fixture
async def bob(accounts: Accounts) -> None:
    await accounts.store.put_org("acme", "Acme Corp")
    await accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await accounts.store.put_member("acme", "carol", "carol@acme.example", "Carol", "member")


async def published_by(
    redis_url: str, change: Callable[[], Awaitable[object]]
) -> list[dict[str, Any]]:
    """Every command Redis ran while `change` ran, as MONITOR saw it (the issuer and args)."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    seen: list[dict[str, Any]] = []
    try:
        async with client.monitor() as monitor:
            await client.ping()  # MONITOR is on once a command reaches it
            await change()
            await client.echo("end of change")  # marks the end in MONITOR's output
            while True:
                command = await asyncio.wait_for(monitor.next_command(), 5)
                if "end of change" in command["command"]:
                    break
                seen.append(command)
    finally:
        await client.aclose()
    return [c for c in seen if c["command"].upper().startswith("PUBLISH")]


async def test_a_member_update_is_delivered_with_its_write(
    accounts: Accounts, bob: None, listener: Listener, redis: aioredis.Redis
) -> None:
    await accounts.store.put_member(
        "acme", "bob", "bob@acme.example", "Robert", "member", create=False
    )
    event = await listener.next()
    assert event == {"event": "member_changed", "org": "acme", "member": "bob"}
    # By the time anyone hears of it, the write is there to be read.
    assert await redis.hget(keys.member("acme", "bob"), "name") == b"Robert"
    assert await listener.next(wait_s=0.2) is None  # once


async def test_creating_a_member_publishes_nothing(
    accounts: Accounts, bob: None, listener: Listener
) -> None:
    await accounts.store.put_member("acme", "dave", "dave@acme.example", "Dave", "member")
    assert await listener.next(wait_s=0.3) is None  # nothing cached about a new member


@pytest.mark.parametrize("disabled", [True, False])
async def test_disabling_or_enabling_is_delivered_with_its_write(
    accounts: Accounts, bob: None, listener: Listener, redis: aioredis.Redis, disabled: bool
) -> None:
    await accounts.store.set_disabled(BOB_KEY, disabled)
    assert await listener.next() == {"event": "member_changed", "org": "acme", "member": "bob"}
    stored = await redis.hget(keys.member("acme", "bob"), "disabled")
    assert stored == (b"1" if disabled else b"0")


async def test_disabling_staff_publishes_nothing(accounts: Accounts, listener: Listener) -> None:
    await accounts.store.put_staff("sam", "sam@vendor.example", "Sam")
    await accounts.store.set_disabled("staff:sam", True)
    assert await listener.next(wait_s=0.3) is None


async def test_org_settings_are_delivered_with_their_write(
    accounts: Accounts, bob: None, listener: Listener, redis: aioredis.Redis
) -> None:
    await accounts.store.put_org("acme", "Acme Corp", {"admins_impersonable": True})
    assert await listener.next() == {"event": "member_changed", "org": "acme", "member": "*"}
    assert b"admins_impersonable" in (await redis.hget(keys.org("acme"), "settings") or b"")
    await accounts.store.put_org("acme", "Acme Corporation")  # a rename: nothing to tell
    assert await listener.next(wait_s=0.3) is None
    await save_settings(redis, "acme", OrgSettings(approvals_required=2))
    assert await listener.next() == {"event": "member_changed", "org": "acme", "member": "*"}
    assert b'"approvals_required": 2' in (await redis.hget(keys.org("acme"), "settings") or b"")


async def test_each_event_is_published_by_the_script_that_writes(
    accounts: Accounts, bob: None, redis_url: str, redis: aioredis.Redis
) -> None:
    """No separate PUBLISH a dying process could leave out: Redis ran it inside the script."""
    changes: list[Callable[[], Awaitable[object]]] = [
        lambda: accounts.store.put_member(
            "acme", "bob", "bob@acme.example", "Robert", "member", create=False
        ),
        lambda: accounts.store.set_disabled(BOB_KEY, True),
        lambda: accounts.store.put_org("acme", "Acme Corp", {"approvals_required": 1}),
        lambda: save_settings(redis, "acme", OrgSettings()),
    ]
    for change in changes:
        publishes = await published_by(redis_url, change)
        assert [p["client_type"] for p in publishes] == ["lua"]


async def test_failed_writes_publish_nothing_and_change_nothing(
    accounts: Accounts, bob: None, listener: Listener, redis: aioredis.Redis
) -> None:
    store = accounts.store
    before = await redis.hgetall(keys.member("acme", "bob"))
    with pytest.raises(AccountConflict):  # carol's email
        await store.put_member("acme", "bob", "carol@acme.example", "Bob", "member", create=False)
    with pytest.raises(AccountNotFound):
        await store.put_member("acme", "nobody", "n@acme.example", "N", "member", create=False)
    with pytest.raises(AccountNotFound):
        await store.set_disabled("member:acme:nobody", True)
    assert not await redis.exists(keys.member("acme", "nobody"))  # no half-made account
    assert await redis.hgetall(keys.member("acme", "bob")) == before
    # A key of the wrong type where a write must go: refused before anything is written.
    await redis.delete(keys.org_members("acme"))
    await redis.set(keys.org_members("acme"), "not a set")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.put_member("acme", "bob", "bob@acme.example", "Robert", "member", create=False)
    assert await redis.hgetall(keys.member("acme", "bob")) == before
    await redis.set(keys.org_index(), "not a set")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.put_org("acme", "Acme Corp", {"approvals_required": 2})
    assert b"approvals_required" not in (await redis.hget(keys.org("acme"), "settings") or b"")
    await redis.delete(keys.member("acme", "bob"))
    await redis.set(keys.member("acme", "bob"), "not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.set_disabled(BOB_KEY, True)
    await redis.delete(keys.org("acme"))
    await redis.set(keys.org("acme"), "not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await save_settings(redis, "acme", OrgSettings())
    assert await listener.next(wait_s=0.3) is None


async def test_concurrent_changes_each_arrive_after_their_own_write(
    accounts: Accounts, bob: None, listener: Listener, redis: aioredis.Redis
) -> None:
    names = [f"Bob {n}" for n in range(20)]
    await asyncio.gather(
        *(
            accounts.store.put_member(
                "acme", "bob", "bob@acme.example", name, "member", create=False
            )
            for name in names
        )
    )
    events = [await listener.next() for _ in names]
    assert events == [{"event": "member_changed", "org": "acme", "member": "bob"}] * len(names)
    assert await listener.next(wait_s=0.2) is None
    assert await redis.hget(keys.member("acme", "bob"), "name") in [n.encode() for n in names]
