"""Fixtures for account tests: the account services on the real test Redis and clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.accounts import Accounts, PasswordHasher, open_accounts
from gateway.clock import ManualClock

# The smallest scrypt cost the hasher accepts: the tests check behaviour, not cost.
FAST_HASHER = PasswordHasher(log2_n=10)


@pytest.fixture
def accounts(redis: aioredis.Redis, clock: ManualClock, tmp_path: Path) -> Accounts:
    return open_accounts(redis, clock, tmp_path, hasher=FAST_HASHER)


@pytest.fixture
async def alice(accounts: Accounts) -> str:
    """An enrolled org admin; returns her TOTP secret."""
    await accounts.store.put_org("acme", "Acme Corp")
    account = await accounts.store.put_member(
        "acme", "alice", "alice@acme.example", "Alice", "admin"
    )
    await accounts.store.set_password(account.key, "alice-password-1")
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    await accounts.store.set_totp_secret(account.key, secret)
    return secret
