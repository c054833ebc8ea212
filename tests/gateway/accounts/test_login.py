from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts import Accounts, LoginRefused
from gateway.accounts.totp import code_at
from gateway.clock import ManualClock

IP = "203.0.113.7"


async def refused(awaitable: object) -> LoginRefused:
    with pytest.raises(LoginRefused) as caught:
        await awaitable  # type: ignore[misc]
    return caught.value


async def test_full_login(accounts: Accounts, alice: str, clock: ManualClock) -> None:
    account = (await accounts.login.password("Alice@acme.example", "alice-password-1", IP)).account
    assert account.key == "member:acme:alice"
    done = await accounts.login.totp(account.key, code_at(alice, clock.now()))
    assert done.principal.role == "admin"


async def test_unknown_user_same_answer_as_wrong_password(accounts: Accounts, alice: str) -> None:
    wrong = await refused(accounts.login.password("alice@acme.example", "nope-nope", IP))
    unknown = await refused(accounts.login.password("zed@acme.example", "nope-nope", IP))
    assert (wrong.error, wrong.reason, wrong.status) == (
        unknown.error,
        unknown.reason,
        unknown.status,
    )
    assert wrong.error == "invalid_credentials"
    assert wrong.status == 401


async def test_throttled_unknown_and_known_alike(accounts: Accounts, alice: str) -> None:
    for email in ("alice@acme.example", "zed@acme.example"):
        for _ in range(3):
            await refused(accounts.login.password(email, "wrong-wrong", f"198.51.100.{len(email)}"))
        late = await refused(accounts.login.password(email, "alice-password-1", "198.51.100.99"))
        assert late.error == "too_many_attempts"
        assert late.status == 429
        assert late.retry_after == 1


async def test_throttle_ends_by_clock(accounts: Accounts, alice: str, clock: ManualClock) -> None:
    for _ in range(3):
        await refused(accounts.login.password("alice@acme.example", "wrong-wrong", IP))
    blocked = await refused(accounts.login.password("alice@acme.example", "alice-password-1", IP))
    assert blocked.retry_after == 1
    clock.advance(1)
    await refused(accounts.login.password("alice@acme.example", "wrong-wrong", IP))
    blocked = await refused(accounts.login.password("alice@acme.example", "alice-password-1", IP))
    assert blocked.retry_after == 2
    clock.advance(2)
    account = (await accounts.login.password("alice@acme.example", "alice-password-1", IP)).account
    assert account.key == "member:acme:alice"
    # Success forgets the account's failures.
    await refused(accounts.login.password("alice@acme.example", "wrong-wrong", IP))
    account = (await accounts.login.password("alice@acme.example", "alice-password-1", IP)).account
    assert account.key == "member:acme:alice"


async def test_wrong_and_replayed_totp(accounts: Accounts, alice: str, clock: ManualClock) -> None:
    key = "member:acme:alice"
    wrong = await refused(
        accounts.login.totp(key, "000000" if code_at(alice, clock.now()) != "000000" else "111111")
    )
    assert wrong.error == "invalid_totp"
    assert wrong.status == 401
    code = code_at(alice, clock.now())
    await accounts.login.totp(key, code)
    replay = await refused(accounts.login.totp(key, code))
    assert replay.error == "invalid_totp"
    expired = await refused(accounts.login.totp(key, code_at(alice, clock.now() - 90)))
    assert expired.error == "invalid_totp"


async def test_lockout_revealed_only_after_correct_password(
    accounts: Accounts, alice: str, clock: ManualClock
) -> None:
    key = "member:acme:alice"
    bad = "000000" if code_at(alice, clock.now()) != "000000" else "111111"
    errors = [(await refused(accounts.login.totp(key, bad))).error for _ in range(5)]
    assert errors == ["invalid_totp"] * 4 + ["account_locked"]
    # Even the right code is refused while locked.
    locked = await refused(accounts.login.totp(key, code_at(alice, clock.now())))
    assert locked.error == "account_locked"
    assert locked.retry_after == 900
    wrong_pw = await refused(accounts.login.password("alice@acme.example", "wrong-wrong", IP))
    assert wrong_pw.error == "invalid_credentials"
    right_pw = await refused(accounts.login.password("alice@acme.example", "alice-password-1", IP))
    assert right_pw.error == "account_locked"
    assert right_pw.status == 403
    clock.advance(900)
    account = (await accounts.login.password("alice@acme.example", "alice-password-1", IP)).account
    await accounts.login.totp(account.key, code_at(alice, clock.now()))


async def test_disabled_revealed_only_after_correct_password(
    accounts: Accounts, alice: str
) -> None:
    await accounts.store.set_disabled("member:acme:alice", True)
    wrong = await refused(accounts.login.password("alice@acme.example", "wrong-wrong", IP))
    assert wrong.error == "invalid_credentials"
    right = await refused(accounts.login.password("alice@acme.example", "alice-password-1", IP))
    assert right.error == "account_disabled"


async def test_unenrolled_account_needs_enrolment(accounts: Accounts, alice: str) -> None:
    await accounts.enrolment.issue("member:acme:alice")
    account = (await accounts.login.password("alice@acme.example", "alice-password-1", IP)).account
    needs = await refused(accounts.login.totp(account.key, "123456"))
    assert needs.error == "enrolment_required"


async def test_tampered_secret_denies(
    accounts: Accounts, alice: str, redis: aioredis.Redis, clock: ManualClock
) -> None:
    await redis.hset(keys.member("acme", "alice"), "totp_secret", "v1.AAAA.BBBB")
    denied = await refused(accounts.login.totp("member:acme:alice", code_at(alice, clock.now())))
    assert denied.error == "totp_unavailable"


async def test_oversized_fields_refused(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    too_long = await refused(accounts.login.password("a" * 300 + "@x.example", "pw", IP))
    assert too_long.status == 422
    assert not await redis.exists(keys.password_failures_address(IP))
