from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from gateway import keys
from gateway.accounts import AccountNotFound, Accounts
from gateway.accounts.totp import code_at
from gateway.clock import ManualClock
from gateway.sessions.records import create_login_record

BOB = "member:acme:bob"


@pytest.fixture
async def bob(accounts: Accounts) -> str:
    await accounts.store.put_org("acme", "Acme")
    account = await accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await accounts.store.set_password(account.key, "bob-password-1")
    return await accounts.enrolment.issue(account.key)


@pytest.fixture
async def enrolling(accounts: Accounts, bob: str) -> tuple[str, str]:
    """Bob's enrolment under way: (token hash, the new secret shown as a QR code)."""
    started = await accounts.enrolment.begin(bob, BOB)
    assert started is not None
    return started


async def test_enrol_with_token_and_one_code(
    accounts: Accounts, bob: str, enrolling: tuple[str, str], clock: ManualClock
) -> None:
    key = BOB
    digest, secret = enrolling
    assert not (await accounts.store.require(key)).enrolled
    assert await accounts.enrolment.complete(digest, key, code_at(secret, clock.now()))
    account = await accounts.store.require(key)
    assert accounts.store.totp_secret(account) == secret
    assert not await accounts.enrolment.has_live_token(key)
    # The token is spent.
    assert await accounts.enrolment.begin(bob, key) is None
    # The code that proved the secret cannot log in again.
    clock.advance(0)
    with pytest.raises(Exception, match="invalid_totp"):
        await accounts.login.totp(key, code_at(secret, clock.now()))


async def test_wrong_code_keeps_secret_inactive(
    accounts: Accounts, enrolling: tuple[str, str], clock: ManualClock
) -> None:
    key = BOB
    digest, secret = enrolling
    other = "000000" if code_at(secret, clock.now()) != "000000" else "111111"
    assert not await accounts.enrolment.complete(digest, key, other)
    assert not (await accounts.store.require(key)).enrolled


async def test_token_of_another_account_refused(accounts: Accounts, bob: str) -> None:
    await accounts.store.put_member("acme", "carol", "carol@acme.example", "Carol", "member")
    assert await accounts.enrolment.begin(bob, "member:acme:carol") is None
    assert await accounts.enrolment.begin("forged-token", BOB) is None
    assert await accounts.enrolment.begin("x" * 10_000, BOB) is None


async def test_token_expires_after_24h(accounts: Accounts, bob: str, clock: ManualClock) -> None:
    clock.advance(24 * 3600 + 1)
    assert await accounts.enrolment.begin(bob, BOB) is None


async def test_reissue_kills_old_token(accounts: Accounts, bob: str) -> None:
    newer = await accounts.enrolment.issue(BOB)
    assert await accounts.enrolment.begin(bob, BOB) is None
    assert await accounts.enrolment.begin(newer, BOB) is not None


async def test_only_latest_qr_completes(accounts: Accounts, bob: str, clock: ManualClock) -> None:
    key = BOB
    first = await accounts.enrolment.begin(bob, key)
    second = await accounts.enrolment.begin(bob, key)
    assert first is not None
    assert second is not None
    if code_at(first[1], clock.now()) != code_at(second[1], clock.now()):
        assert not await accounts.enrolment.complete(first[0], key, code_at(first[1], clock.now()))
    assert await accounts.enrolment.complete(second[0], key, code_at(second[1], clock.now()))


async def test_concurrent_completions_spend_token_once(
    accounts: Accounts, enrolling: tuple[str, str], clock: ManualClock
) -> None:
    key = BOB
    digest, secret = enrolling
    code = code_at(secret, clock.now())
    results = await asyncio.gather(
        *(accounts.enrolment.complete(digest, key, code) for _ in range(8))
    )
    assert results.count(True) == 1


async def test_reset_removes_secret(accounts: Accounts, alice: str) -> None:
    await accounts.enrolment.issue("member:acme:alice")
    assert not (await accounts.store.require("member:acme:alice")).enrolled
    with pytest.raises(AccountNotFound):
        await accounts.enrolment.issue("member:acme:nobody")


async def test_a_totp_reset_ends_every_session_in_the_same_step(
    accounts: Accounts, alice: str, redis: aioredis.Redis, clock: ManualClock
) -> None:
    key = "member:acme:alice"
    epoch = int(await redis.get(keys.session_epoch(key)) or 0)
    record = {"principal": key, "epoch": epoch, "created_at": clock.now()}
    for sid in ("s1", "s2"):
        assert await create_login_record(redis, sid, {**record, "last_seen": clock.now()}, 600)
    token, ended = await accounts.enrolment.reset(key)
    assert ended == 2
    assert not await redis.exists(keys.console_session("s1"), keys.console_session("s2"))
    assert not (await accounts.store.require(key)).enrolled
    assert await accounts.enrolment.has_live_token(key)
    assert token


async def test_a_totp_reset_that_cannot_end_the_sessions_changes_nothing(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    key = "member:acme:alice"
    await redis.rpush(keys.principal_sessions(key), "not what the gateway wrote")
    with pytest.raises(redis_errors.ResponseError):
        await accounts.enrolment.reset(key)
    account = await accounts.store.require(key)
    assert accounts.store.totp_secret(account) == alice  # still the old second factor
    assert not await accounts.enrolment.has_live_token(key)
    with pytest.raises(AccountNotFound):
        await accounts.enrolment.reset("member:acme:nobody")


async def test_issuing_a_token_to_an_enrolled_account_ends_its_sessions(
    accounts: Accounts, alice: str, redis: aioredis.Redis, clock: ManualClock
) -> None:
    # `issue` removes the second factor just as a reset does: what it opened ends too.
    key = "member:acme:alice"
    epoch = int(await redis.get(keys.session_epoch(key)) or 0)
    record = {"principal": key, "epoch": epoch, "created_at": clock.now()}
    assert await create_login_record(redis, "s1", {**record, "last_seen": clock.now()}, 600)
    token = await accounts.enrolment.issue(key)
    assert not await redis.exists(keys.console_session("s1"))
    assert int(await redis.get(keys.session_epoch(key)) or 0) == epoch + 1
    assert not (await accounts.store.require(key)).enrolled
    assert await accounts.enrolment.begin(token, key) is not None
