from __future__ import annotations

import time

import pytest

from gateway.accounts.passwords import PasswordHasher


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(log2_n=10)


async def test_hash_verifies_only_the_same_password(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse")
    assert stored.startswith("scrypt$10$8$1$")
    assert await hasher.verify("correct horse", stored)
    assert not await hasher.verify("correct hors", stored)
    assert not await hasher.verify("", stored)


async def test_same_password_hashes_differently(hasher: PasswordHasher) -> None:
    assert await hasher.hash("pw-pw-pw-pw") != await hasher.hash("pw-pw-pw-pw")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "scrypt$10$8$1$$",
        "scrypt$99$8$1$AAAA$AAAA",
        "bcrypt$x",
        "scrypt$a$b$c$d$e",
        "scrypt$10$8$1$AAAA$A",
    ],
)
async def test_damaged_hash_never_verifies(hasher: PasswordHasher, stored: str) -> None:
    assert not await hasher.verify("anything", stored)


async def test_oversized_password_refused_without_work(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("short-password")
    assert not await hasher.verify("x" * 100_000, stored)


def test_absent_account_costs_the_same_work() -> None:
    hasher = PasswordHasher(log2_n=14)
    stored = hasher.hash_sync("a-password")
    start = time.perf_counter()
    hasher.verify_sync("guess-one", stored)
    known = time.perf_counter() - start
    start = time.perf_counter()
    hasher.verify_sync("guess-two", hasher._absent)
    absent = time.perf_counter() - start
    assert absent > known * 0.5
    assert known > absent * 0.5


def test_cost_out_of_range_refused() -> None:
    with pytest.raises(ValueError, match="log2_n"):
        PasswordHasher(log2_n=4)
