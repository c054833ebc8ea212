"""Login throttling, judged by the Clock against timestamps stored in Redis.

Passwords: failures slow down further attempts per account name (the email as typed,
known or not) and per client address with a growing delay and no hard lock, so nobody
can lock the approvers out. An attempt is counted as a failure *before* the password is
checked (atomically, in Lua) and forgiven on success, so concurrent guesses cannot slip
through between check and count. A client address is counted in one spelling (an
IPv4-mapped IPv6 address is its IPv4 address), and an IPv6 client by its /64, the block
one host or site is given: rotating the interface id does not make a new client.

    account: 3 free failures, then 1, 2, 4, ... s between attempts, at most 300 s
    address: 10 free failures, then 1, 2, 4, ... s, at most 300 s
    both forgotten after an hour without failures

TOTP after a correct password: 5 failures within 15 minutes lock the account for 15
minutes. In-flight attempts count, so at most 5 codes are ever tried per window.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway import keys
from gateway.clock import Clock


@dataclass(frozen=True)
class Backoff:
    free: int  # failures allowed without delay
    base_s: float
    max_s: float
    forget_after_s: float


IPV6_CLIENT_PREFIX = 64

ACCOUNT_BACKOFF = Backoff(free=3, base_s=1.0, max_s=300.0, forget_after_s=3600.0)
ADDRESS_BACKOFF = Backoff(free=10, base_s=1.0, max_s=300.0, forget_after_s=3600.0)
TOTP_MAX_FAILURES = 5
TOTP_WINDOW_S = 900.0
TOTP_LOCK_S = 900.0

# KEYS: hashes. ARGV: now, then per key (free, base, max, forget). Returns seconds to wait
# (0: attempt admitted and counted against every key).
_ADMIT_ATTEMPT = """
local now = tonumber(ARGV[1])
local wait = 0
local counts = {}
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[2 + (i - 1) * 4])
  local base = tonumber(ARGV[3 + (i - 1) * 4])
  local max = tonumber(ARGV[4 + (i - 1) * 4])
  local forget = tonumber(ARGV[5 + (i - 1) * 4])
  local count = tonumber(redis.call('HGET', key, 'count') or '0')
  local last = tonumber(redis.call('HGET', key, 'last') or '0')
  if now - last > forget then count = 0 end
  counts[i] = count
  if count >= free then
    local delay = math.min(base * 2 ^ (count - free), max)
    local left = last + delay - now
    if left > wait then wait = left end
  end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'count', counts[i] + 1, 'last', ARGV[1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[5 + (i - 1) * 4])) + 60)
end
return '0'
"""

_FORGIVE = """
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if count > 0 then redis.call('HSET', KEYS[1], 'count', count - 1) end
return 1
"""

# KEYS[1]: totp failures hash. ARGV: now, max, window, lock.
# Returns seconds locked (>0) or 0 when the attempt is admitted (and counted).
_BEGIN_TOTP = """
local now = tonumber(ARGV[1])
local locked = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0')
if locked > now then return tostring(locked - now) end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or '0')
if now - first > tonumber(ARGV[3]) then count = 0; first = now end
if count >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'locked_until', now + tonumber(ARGV[4]), 'count', 0, 'first', now)
  return tostring(tonumber(ARGV[4]))
end
redis.call('HSET', KEYS[1], 'count', count + 1, 'first', first)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) + tonumber(ARGV[4])) + 60)
return '0'
"""

# A failed code: lock once the window holds ARGV[2] failures. Returns 1 when now locked.
_FAIL_TOTP = """
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if count >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'locked_until', tonumber(ARGV[1]) + tonumber(ARGV[3]), 'count', 0)
  return 1
end
return 0
"""


def _seconds(reply: bytes | str | float) -> int:
    """A script's (or a field's) fractional seconds, rounded up; 0 when none are left."""
    left = float(reply.decode() if isinstance(reply, bytes) else reply)
    return math.ceil(left) if left > 0 else 0


def address_key(address: str) -> str:
    """The one name of a client address for throttling (see the module docstring)."""
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        return address  # not an IP (e.g. a unix socket peer): counted as given
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        # SECURITY: an IPv6 client holds a whole /64; each of its addresses is the same client.
        network = ipaddress.IPv6Network((parsed, IPV6_CLIENT_PREFIX), strict=False)
        return str(network)
    return str(parsed)


class PasswordThrottle:
    def __init__(
        self,
        redis: aioredis.Redis,
        clock: Clock,
        *,
        account: Backoff = ACCOUNT_BACKOFF,
        address: Backoff = ADDRESS_BACKOFF,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._account = account
        self._address = address
        self._begin = redis.register_script(_ADMIT_ATTEMPT)
        self._forgive = redis.register_script(_FORGIVE)

    async def begin(self, account_name: str, address: str) -> int:
        """Admit one attempt (counted as a failure until forgiven) or say how long to wait."""
        args: list[float | int] = [self._clock.now()]
        for backoff in (self._account, self._address):
            args += [backoff.free, backoff.base_s, backoff.max_s, backoff.forget_after_s]
        return _seconds(
            await self._begin(
                keys=[
                    keys.password_failures_account(account_name),
                    keys.password_failures_address(address_key(address)),
                ],
                args=args,
            )
        )

    async def succeeded(self, account_name: str, address: str) -> None:
        await self._redis.delete(keys.password_failures_account(account_name))
        await self._forgive(keys=[keys.password_failures_address(address_key(address))], args=[])


class TotpLockout:
    def __init__(
        self,
        redis: aioredis.Redis,
        clock: Clock,
        *,
        max_failures: int = TOTP_MAX_FAILURES,
        window_s: float = TOTP_WINDOW_S,
        lock_s: float = TOTP_LOCK_S,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._max = max_failures
        self._window = window_s
        self._lock = lock_s
        self._begin = redis.register_script(_BEGIN_TOTP)
        self._fail = redis.register_script(_FAIL_TOTP)

    async def begin(self, principal_key: str) -> int:
        """0 when a code may be tried now (counted until it succeeds); else seconds locked."""
        return _seconds(
            await self._begin(
                keys=[keys.totp_failures(principal_key)],
                args=[self._clock.now(), self._max, self._window, self._lock],
            )
        )

    async def failed(self, principal_key: str) -> bool:
        """Record a wrong code; True when that locked the account."""
        locked = await self._fail(
            keys=[keys.totp_failures(principal_key)],
            args=[self._clock.now(), self._max, self._lock],
        )
        return bool(locked == 1)

    async def succeeded(self, principal_key: str) -> None:
        await self._redis.delete(keys.totp_failures(principal_key))

    async def locked_for(self, principal_key: str) -> int:
        raw = await self._redis.hget(keys.totp_failures(principal_key), "locked_until")
        return _seconds(float(raw) - self._clock.now()) if raw else 0
