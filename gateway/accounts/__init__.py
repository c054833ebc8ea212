"""Accounts: staff and org members, their passwords, TOTP secrets, throttling and enrolment.

`open_accounts` wires the parts to one Redis, one Clock and the TOTP key kept outside
Redis (GATEWAY_TOTP_KEY, else data_dir/keys/totp.key, mode 0600):

    accounts = open_accounts(redis, clock, config.data_dir)
    proven = await accounts.login.password(email, password, client_ip)
    await accounts.login.totp(proven.account.key, code)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from gateway.accounts.enrolment import Enrolment
from gateway.accounts.errors import (
    AccountConflict,
    AccountError,
    AccountNotFound,
    DirectoryError,
    InvalidAccountInput,
    LoginRefused,
    SecretKeyError,
)
from gateway.accounts.keyfile import secret_key
from gateway.accounts.login import LoginCheck, ProvenPassword
from gateway.accounts.model import Account
from gateway.accounts.passwords import PasswordHasher
from gateway.accounts.secretbox import TotpSecretBox
from gateway.accounts.store import AccountStore, Org
from gateway.accounts.throttling import PasswordThrottle, TotpLockout
from gateway.accounts.totp import TotpVerifier
from gateway.clock import Clock

TOTP_KEY_ENV = "GATEWAY_TOTP_KEY"

__all__ = [
    "Account",
    "AccountConflict",
    "AccountError",
    "AccountNotFound",
    "AccountStore",
    "Accounts",
    "DirectoryError",
    "Enrolment",
    "InvalidAccountInput",
    "LoginCheck",
    "LoginRefused",
    "Org",
    "PasswordHasher",
    "ProvenPassword",
    "SecretKeyError",
    "TotpVerifier",
    "open_accounts",
]


@dataclass(frozen=True)
class Accounts:
    store: AccountStore
    enrolment: Enrolment
    login: LoginCheck
    verifier: TotpVerifier


def open_accounts(
    redis: aioredis.Redis,
    clock: Clock,
    data_dir: Path,
    *,
    hasher: PasswordHasher | None = None,
) -> Accounts:
    box = TotpSecretBox(secret_key(data_dir, "totp", env=TOTP_KEY_ENV))
    store = AccountStore(redis, box, hasher or PasswordHasher())
    verifier = TotpVerifier(redis, clock)
    login = LoginCheck(store, PasswordThrottle(redis, clock), TotpLockout(redis, clock), verifier)
    return Accounts(store, Enrolment(store, clock, verifier), login, verifier)
