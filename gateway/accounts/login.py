"""The login checks: password (throttled), then TOTP (with lockout), as one object.

What a client learns is earned step by step: an unknown email and a wrong password get
the same answer after the same scrypt work; throttling depends only on the email as
typed and the client address; locked, disabled and not-yet-enrolled accounts are told
so only after a correct password.

    check = LoginCheck(store, throttle, lockout, verifier)
    proven = await check.password("alice@acme.example", "…", "203.0.113.7")
    await check.totp(proven.account.key, "123456")

`password` also returns the account's session epoch, read with the account before the
password is checked: the login's new session is saved only if it is still current
(`gateway.sessions.epochs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.accounts.errors import LoginRefused, SecretKeyError
from gateway.accounts.model import MAX_PASSWORD, Account
from gateway.accounts.store import AccountStore
from gateway.accounts.throttling import PasswordThrottle, TotpLockout
from gateway.accounts.totp import TotpVerifier

MAX_EMAIL = 254


def _invalid() -> LoginRefused:
    return LoginRefused("invalid_credentials", "email or password is wrong", status=401)


def _locked(seconds: int, account: Account | None = None) -> LoginRefused:
    return LoginRefused(
        "account_locked",
        f"too many wrong codes: this account is locked for {seconds} s",
        status=403,
        retry_after=seconds,
        principal=account.principal if account is not None else None,
    )


@dataclass(frozen=True)
class ProvenPassword:
    """A password just proven: the account as read, and the session epoch read with it."""

    account: Account
    session_epoch: int


class LoginCheck:
    def __init__(
        self,
        store: AccountStore,
        throttle: PasswordThrottle,
        lockout: TotpLockout,
        verifier: TotpVerifier,
    ) -> None:
        self.store = store
        self.throttle = throttle
        self.lockout = lockout
        self.verifier = verifier

    async def password(self, email: str, password: str, address: str) -> ProvenPassword:
        """The account whose password this is, ready for its TOTP step; else LoginRefused."""
        if len(email) > MAX_EMAIL or len(password) > MAX_PASSWORD:
            raise LoginRefused(
                "field_too_long",
                f"email is at most {MAX_EMAIL} and password {MAX_PASSWORD} characters",
                status=422,
            )
        name = email.strip().lower()
        wait = await self.throttle.begin(name, address)
        if wait:
            raise LoginRefused(
                "too_many_attempts",
                f"too many failed logins; try again in {wait} s",
                status=429,
                retry_after=wait,
            )
        # The epoch is read with the account, before the check (see ProvenPassword).
        found = await self.store.by_email_with_epoch(name)
        account, epoch = found if found is not None else (None, 0)
        if account is None or not account.password_hash:
            # SECURITY: same work and same answer as a wrong password.
            await self.store.hasher.verify_absent(password)
            raise _invalid()
        if not await self.store.hasher.verify(password, account.password_hash):
            raise _invalid()
        await self.throttle.succeeded(name, address)
        # Only now, after a correct password, may the account's state be told (and the
        # refusal's audit record name the account).
        if account.disabled:
            raise LoginRefused(
                "account_disabled",
                "this account is disabled",
                status=403,
                principal=account.principal,
            )
        locked = await self.lockout.locked_for(account.key)
        if locked:
            raise _locked(locked, account)
        return ProvenPassword(account, epoch)

    async def totp(self, principal_key: str, code: str) -> Account:
        """Check one code for an account whose password was just proven."""
        account = await self.store.require(principal_key)
        if account.disabled:
            raise LoginRefused("account_disabled", "this account is disabled", status=403)
        if not account.enrolled:
            raise LoginRefused(
                "enrolment_required",
                "this account has no TOTP secret yet: enrol with your enrolment token",
                status=403,
            )
        locked = await self.lockout.begin(principal_key)
        if locked:
            raise _locked(locked)
        try:
            secret = self.store.totp_secret(account)
        except SecretKeyError as exc:
            # SECURITY: a secret that does not decrypt denies (tampered record or wrong key).
            raise LoginRefused(
                "totp_unavailable", "this account's TOTP secret cannot be used", status=403
            ) from exc
        if not await self.verifier.verify(principal_key, secret, code.strip()):
            if await self.lockout.failed(principal_key):
                raise _locked(await self.lockout.locked_for(principal_key))
            raise LoginRefused(
                "invalid_totp", "the code is wrong, expired or already used", status=401
            )
        await self.lockout.succeeded(principal_key)
        return account
