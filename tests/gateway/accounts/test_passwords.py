from __future__ import annotations

import asyncio
import concurrent.futures
import threading
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


async def test_hashing_never_waits_for_the_shared_thread_pool(hasher: PasswordHasher) -> None:
    # A flood of logins must not hold up what the event loop's default pool serves (the
    # upstream connector's DNS lookups, policy reloads): scrypt has its own threads. Here
    # the default pool's only thread is busy, and hashing still finishes.
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    release = threading.Event()
    blocked = loop.run_in_executor(None, release.wait, 30.0)
    try:
        stored = await asyncio.wait_for(hasher.hash("correct horse"), 10)
        assert await asyncio.wait_for(hasher.verify("correct horse", stored), 10)
        assert not await asyncio.wait_for(hasher.verify_absent("correct horse"), 10)
    finally:
        release.set()
        assert await blocked is True
