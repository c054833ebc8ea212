"""Password hashing: scrypt from `cryptography`, parameters stored with each hash.

A stored hash reads `scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost can
grow later without invalidating old hashes. Comparison is constant-time. Work runs in
threads of its own (`SCRYPT_THREADS`), so that one login does not stall the event loop
and a flood of logins does not starve what the loop's default pool serves (the upstream
connector's DNS lookups, policy reloads); an unknown account costs exactly the same work
as a known one (`verify_absent`).

    hasher = PasswordHasher()
    stored = await hasher.hash("correct horse battery staple")
    ok = await hasher.verify("correct horse battery staple", stored)
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gateway.accounts.model import MAX_PASSWORD

# 2^15 * 8 * 128 bytes = 32 MiB and ~0.1 s per hash on one core: dear for guessing,
# affordable for a login. Tests pass a smaller cost to stay fast.
DEFAULT_LOG2_N = 15
_R = 8
_P = 1
_LENGTH = 32
# Each thread holds up to 2^log2_n * 128 * r bytes while it works: a few cover the cores
# without letting a flood of attempts claim more memory.
SCRYPT_THREADS = max(1, min(4, os.cpu_count() or 1))
_POOL = ThreadPoolExecutor(max_workers=SCRYPT_THREADS, thread_name_prefix="scrypt")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_T = TypeVar("_T")


async def _in_pool(work: Callable[[], _T]) -> _T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, work)


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    kdf = Scrypt(salt=salt, length=_LENGTH, n=1 << log2_n, r=r, p=p)
    return kdf.derive(password.encode("utf-8", "surrogatepass"))


class PasswordHasher:
    def __init__(self, log2_n: int = DEFAULT_LOG2_N) -> None:
        if not 10 <= log2_n <= 20:
            raise ValueError(f"scrypt log2_n {log2_n}: expected 10 to 20")
        self.log2_n = log2_n
        # A real hash of a random password: the same work for an absent account.
        salt = os.urandom(16)
        self._absent = (
            f"scrypt${log2_n}${_R}${_P}${_b64(salt)}${_b64(_derive('x', salt, log2_n, _R, _P))}"
        )

    def hash_sync(self, password: str) -> str:
        salt = os.urandom(16)
        digest = _derive(password, salt, self.log2_n, _R, _P)
        return f"scrypt${self.log2_n}${_R}${_P}${_b64(salt)}${_b64(digest)}"

    async def hash(self, password: str) -> str:
        return await _in_pool(lambda: self.hash_sync(password))

    def verify_sync(self, password: str, stored: str) -> bool:
        if len(password) > MAX_PASSWORD:
            return False
        try:
            scheme, log2_n, r, p, salt, expected = stored.split("$")
            if scheme != "scrypt" or not 10 <= int(log2_n) <= 20:
                return False
            digest = _derive(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
            wanted = base64.b64decode(expected)
        except (ValueError, TypeError):
            # SECURITY: a damaged stored hash never verifies (fail closed).
            return False
        return hmac.compare_digest(digest, wanted)

    async def verify(self, password: str, stored: str) -> bool:
        return await _in_pool(lambda: self.verify_sync(password, stored))

    async def verify_absent(self, password: str) -> bool:
        """Do the work of one verification for an account that does not exist; always False."""
        await _in_pool(lambda: self.verify_sync(password, self._absent))
        return False
