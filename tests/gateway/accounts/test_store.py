from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from gateway import keys
from gateway.accounts import (
    AccountConflict,
    AccountNotFound,
    Accounts,
    InvalidAccountInput,
)
from gateway.identity import PrincipalKind


async def test_create_and_read_back(accounts: Accounts) -> None:
    await accounts.store.put_org("acme", "Acme Corp", {"approvals_required": 1})
    staff = await accounts.store.put_staff("sam", "Sam@Vendor.example", "Sam")
    member = await accounts.store.put_member(
        "acme", "bob", "bob@acme.example", "Bob", "member", impersonable=False
    )
    assert staff.principal.kind is PrincipalKind.STAFF
    assert staff.principal.email == "sam@vendor.example"
    assert member.key == "member:acme:bob"
    assert member.impersonable is False
    assert member.principal.role == "member"
    found = await accounts.store.by_email("SAM@vendor.example")
    assert found is not None
    assert found.key == "staff:sam"
    org = await accounts.store.org("acme")
    assert org is not None
    assert org.settings == {"approvals_required": 1}
    assert await accounts.store.member_ids("acme") == ["bob"]
    assert await accounts.store.staff_ids() == ["sam"]


@pytest.mark.parametrize(
    ("ident", "email", "name"),
    [
        ("a:b", "a@b.example", "A"),
        ("", "a@b.example", "A"),
        ("x" * 65, "a@b.example", "A"),
        ("ok", "not-an-email", "A"),
        ("ok", "a@b.example", ""),
        ("ok", "a@b.example", "bad\nname"),
        ("ok", "a" * 250 + "@b.example", "A"),
    ],
)
async def test_bad_fields_refused_and_nothing_written(
    accounts: Accounts, redis: aioredis.Redis, ident: str, email: str, name: str
) -> None:
    with pytest.raises(InvalidAccountInput):
        await accounts.store.put_staff(ident, email, name)
    assert await redis.dbsize() == 0


async def test_member_needs_existing_org_and_valid_role(accounts: Accounts) -> None:
    with pytest.raises(AccountNotFound):
        await accounts.store.put_member("nope", "bob", "bob@x.example", "Bob", "member")
    await accounts.store.put_org("acme", "Acme")
    with pytest.raises(InvalidAccountInput):
        await accounts.store.put_member("acme", "bob", "bob@x.example", "Bob", "owner")


async def test_email_unique_across_accounts(accounts: Accounts) -> None:
    await accounts.store.put_staff("sam", "sam@vendor.example", "Sam")
    with pytest.raises(AccountConflict):
        await accounts.store.put_staff("sam2", "SAM@vendor.example", "Sam again")
    with pytest.raises(AccountConflict):
        await accounts.store.put_staff("sam", "other@vendor.example", "Sam")
    assert await accounts.store.staff_ids() == ["sam"]


async def test_concurrent_creations_for_one_email_end_with_one_owner(
    accounts: Accounts, redis_url: str
) -> None:
    results = await asyncio.gather(
        *(accounts.store.put_staff(f"s{i}", "same@vendor.example", "S") for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, AccountConflict) for r in results if isinstance(r, BaseException))
    owner = await accounts.store.by_email("same@vendor.example")
    assert owner is not None
    assert owner.key == winners[0].key


async def test_email_change_moves_the_index(accounts: Accounts) -> None:
    await accounts.store.put_staff("sam", "sam@vendor.example", "Sam")
    await accounts.store.put_staff("sam", "samuel@vendor.example", "Sam", create=False)
    assert await accounts.store.by_email("sam@vendor.example") is None
    moved = await accounts.store.by_email("samuel@vendor.example")
    assert moved is not None
    assert moved.key == "staff:sam"


async def test_profile_update_keeps_secrets(accounts: Accounts, alice: str) -> None:
    before = await accounts.store.require("member:acme:alice")
    await accounts.store.put_member(
        "acme", "alice", "alice@acme.example", "Alice A.", "admin", create=False
    )
    after = await accounts.store.require("member:acme:alice")
    assert after.principal.name == "Alice A."
    assert after.password_hash == before.password_hash
    assert accounts.store.totp_secret(after) == alice


async def test_weak_or_oversized_password_refused(accounts: Accounts, alice: str) -> None:
    for bad in ("short", "x" * 5000):
        with pytest.raises(InvalidAccountInput):
            await accounts.store.set_password("member:acme:alice", bad)


async def test_bad_totp_secret_refused(accounts: Accounts, alice: str) -> None:
    with pytest.raises(InvalidAccountInput):
        await accounts.store.set_totp_secret("member:acme:alice", "lowercase-not-base32")
    account = await accounts.store.require("member:acme:alice")
    assert accounts.store.totp_secret(account) == alice


async def _two_sessions(redis: aioredis.Redis, key: str) -> None:
    for sid in ("s1", "s2"):
        await redis.set(keys.console_session(sid), "{}")
        await redis.sadd(keys.principal_sessions(key), sid)
        await redis.set(keys.app_session(f"{sid}-app"), "{}")
        await redis.sadd(keys.app_sessions_of(sid), f"{sid}-app")


async def _assert_sessions_gone(redis: aioredis.Redis, key: str) -> None:
    for sid in ("s1", "s2"):
        assert not await redis.exists(keys.console_session(sid), keys.app_session(f"{sid}-app"))
    assert not await redis.exists(keys.principal_sessions(key))


async def test_disable_ends_every_session(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    key = "member:acme:alice"
    await _two_sessions(redis, key)
    assert await accounts.store.set_disabled(key, True) == 2
    await _assert_sessions_gone(redis, key)
    assert (await accounts.store.require(key)).disabled


async def test_password_reset_ends_every_session(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    key = "member:acme:alice"
    await _two_sessions(redis, key)
    assert await accounts.store.set_password(key, "a fresh long passphrase 9") == 2
    await _assert_sessions_gone(redis, key)
    assert not (await accounts.store.require(key)).disabled


async def test_a_new_totp_secret_ends_every_session(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    key = "member:acme:alice"
    assert (await accounts.store.require(key)).enrolled
    await _two_sessions(redis, key)
    assert await accounts.store.set_totp_secret(key, "JBSWY3DPEHPK3PXZ") == 2
    await _assert_sessions_gone(redis, key)
    account = await accounts.store.require(key)
    assert accounts.store.totp_secret(account) == "JBSWY3DPEHPK3PXZ"


@pytest.mark.parametrize("bad", ["staff", "staff:a:b", "member:acme", "org:acme", "staff:a b"])
async def test_bad_principal_key_refused(accounts: Accounts, bad: str) -> None:
    with pytest.raises(InvalidAccountInput):
        await accounts.store.get(bad)


@pytest.mark.parametrize("damage", ["epoch", "sessions", "epoch overflow"])
async def test_a_credential_reset_that_cannot_end_the_sessions_changes_nothing(
    accounts: Accounts, alice: str, redis: aioredis.Redis, damage: str
) -> None:
    # The new credential and the end of the sessions it replaces are one step: were the
    # credential written alone, a re-run of an idempotent import would find it current
    # and never end the sessions of the old one.
    key = "member:acme:alice"
    before = await accounts.store.require(key)
    broken = keys.principal_sessions(key) if damage == "sessions" else keys.session_epoch(key)
    await redis.delete(broken)
    if damage == "epoch overflow":
        await redis.set(broken, str(2**63 - 1))  # an integer INCR cannot raise
    else:
        await redis.rpush(broken, "not what the gateway wrote")
    with pytest.raises(redis_errors.ResponseError):
        await accounts.store.set_password(key, "a fresh long passphrase 9")
    with pytest.raises(redis_errors.ResponseError):
        await accounts.store.set_totp_secret(key, "JBSWY3DPEHPK3PXZ")
    after = await accounts.store.require(key)
    assert after.password_hash == before.password_hash
    assert accounts.store.totp_secret(after) == alice


async def _commands_during(redis_url: str, change: Callable[[], Awaitable[object]]) -> list[Any]:
    """Every command Redis ran while `change` ran, as MONITOR saw it."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url)
    seen: list[Any] = []
    try:
        async with client.monitor() as monitor:
            await client.ping()  # MONITOR is on once a command reaches it
            await change()
            await client.echo("end of change")
            while True:
                command = await asyncio.wait_for(monitor.next_command(), 5)
                if "end of change" in command["command"]:
                    break
                seen.append(command)
    finally:
        await client.aclose()
    return seen


async def test_disable_is_one_script_with_its_session_ends(
    accounts: Accounts, alice: str, redis: aioredis.Redis, redis_url: str
) -> None:
    key = "member:acme:alice"
    await accounts.store.put_staff("sam", "sam@vendor.example", "Sam")
    await accounts.store.set_disabled("staff:sam", True)  # the script is loaded now
    await _two_sessions(redis, key)
    commands = await _commands_during(redis_url, lambda: accounts.store.set_disabled(key, True))
    issued = [c["command"].split()[0].upper() for c in commands if c["client_type"] != "lua"]
    scripted = [c["command"] for c in commands if c["client_type"] == "lua"]
    # One script: the flag, the epoch, the ended sessions and the grant event together,
    # so no failure in between can leave a disabled account with live sessions.
    writes = {"EVAL", "EVALSHA", "HSET", "SET", "DEL", "INCR", "SADD", "SREM", "MULTI"}
    assert [name for name in issued if name in writes] == ["EVALSHA"]
    assert f"HSET {keys.member('acme', 'alice')} disabled 1" in scripted
    assert f"INCR {keys.session_epoch(key)}" in scripted
    assert scripted[-1].startswith("PUBLISH ")  # the grant event, after every write
    assert "member_changed" in scripted[-1]
    await _assert_sessions_gone(redis, key)
    assert (await accounts.store.require(key)).disabled


async def test_disabling_a_missing_account_changes_nothing(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    before = set(await redis.keys("*"))
    with pytest.raises(AccountNotFound):
        await accounts.store.set_disabled("member:acme:nobody", True)
    with pytest.raises(AccountNotFound):
        await accounts.store.set_disabled("member:acme:nobody", False)
    assert set(await redis.keys("*")) == before


async def test_a_credential_for_an_account_deleted_meanwhile_changes_nothing(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    # The account vanished between a caller's check and the write (a concurrent delete):
    # a clear AccountNotFound, and no half-made account hash.
    key = "member:acme:alice"
    assert await redis.delete(keys.member("acme", "alice")) == 1
    before = set(await redis.keys("*"))
    with pytest.raises(AccountNotFound):
        await accounts.store.change_credential(key, {"password_hash": "scrypt$x"})
    assert set(await redis.keys("*")) == before
