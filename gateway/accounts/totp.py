"""TOTP (RFC 6238, 30 s steps, 6 digits, via pyotp) with each step usable once per account.

A code matches the current step or one step either way. The matched step is then
claimed atomically in Redis (Lua): it is accepted only if it is above the last step used
by this account on ANY gateway instance, so a code seen once (or an older one) never
works again.

    verifier = TotpVerifier(redis, clock)
    ok = await verifier.verify("member:acme:alice", secret, "123456")
"""

from __future__ import annotations

import hmac
import re

import pyotp
import redis.asyncio as aioredis

from gateway import keys
from gateway.clock import Clock

STEP_S = 30
SKEW_STEPS = 1
CODE_PATTERN = re.compile(r"[0-9]{6}")
_STEP_TTL_S = 7 * 86400  # garbage collection only

_CLAIM_STEP = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
local step = tonumber(ARGV[1])
if step <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def new_secret() -> str:
    return pyotp.random_base32()


def is_valid_secret(secret: object) -> bool:
    return isinstance(secret, str) and re.fullmatch(r"[A-Z2-7]{16,128}", secret) is not None


def provisioning_uri(secret: str, account_name: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=issuer)


def code_at(secret: str, when: float) -> str:
    """The code for the step containing `when` (for tests and the demo)."""
    return pyotp.TOTP(secret).at(int(when))


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The step within the skew window whose code is `code`, else None (constant work)."""
    if not CODE_PATTERN.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // STEP_S)
    found: int | None = None
    for step in range(current - SKEW_STEPS, current + SKEW_STEPS + 1):
        # SECURITY: compare every candidate in constant time; no early exit.
        if hmac.compare_digest(totp.at(step * STEP_S), code) and found is None:
            found = step
    return found


class TotpVerifier:
    def __init__(self, redis: aioredis.Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock
        self._claim = redis.register_script(_CLAIM_STEP)

    async def verify(self, principal_key: str, secret: str, code: str) -> bool:
        step = matching_step(secret, code, self._clock.now())
        if step is None:
            return False
        # SECURITY: once per step per account, across every instance sharing this Redis.
        claimed = await self._claim(
            keys=[keys.totp_last_step(principal_key)], args=[step, _STEP_TTL_S]
        )
        return bool(claimed == 1)
