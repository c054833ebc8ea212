"""Console-session records in Redis and the rule that decides whether one is still alive.

    gw:session:<sid>           JSON: {created_at, last_seen, ...session data}
    gw:sessions-of:<principal> set of sids          (to end them all, e.g. on disable)
    gw:app-sessions-of:<sid>   set of app-session ids (they die with the console session)

`sid` is the SHA-256 of the cookie's token: Redis (and the audit, which names sessions
by sid) never holds a usable cookie. A session is alive while the Clock says it is
younger than the absolute lifetime and was seen within the idle timeout and, once it
names a principal, while it was made under that account's current session epoch
(`epochs`); a dead one is ended (with its app sessions) the moment it is found dead.
A logged-in record is created only by `create_login_record`, which refuses when the
epoch moved since the login read it. A login's last TOTP check is recent enough while
`mfa_fresh` says so (the MFA stage's rule, and the re-check's).

Reads are Lua scripts (`LuaRead`): run alone on a request, or many at once in one
pipelined round trip (`read_at_once`, the re-check of in-flight sessions).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway import keys
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.sessions.ending import end_console_session
from gateway.sessions.epochs import EPOCH_OF_LUA, made_under_current_epoch

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
# Seen-at is rewritten at most this often: idle timeouts are minutes, not seconds.
TOUCH_EVERY_S = 15.0

# KEYS[1]: the console session. ARGV[1]: the epoch key prefix.
# {record, its principal's epoch ('' when it names none)}, or {} when there is none:
# one round trip, read at one instant.
_READ = (
    EPOCH_OF_LUA
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return {} end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' then return {raw, false} end
return {raw, epoch_of(record['principal'])}
"""
)

# KEYS[1]: the new session, KEYS[2]: its principal's epoch, KEYS[3]: the principal's set.
# ARGV: record, ttl, sid, the epoch the login read before checking any credential.
_CREATE_LOGIN = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[4] then return 'epoch' end
if not redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then return 'exists' end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 'ok'
"""


def sid_of(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def valid_token(token: object) -> TypeGuard[str]:
    return isinstance(token, str) and TOKEN_PATTERN.fullmatch(token) is not None


def json_object(raw: object) -> dict[str, Any] | None:
    """A stored JSON object, or None when absent or not one (a damaged record counts as none)."""
    if not isinstance(raw, bytes | str):
        return None  # absent, or a reply no stored string gives
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def alive(record: dict[str, Any], now: float, limits: Sessions) -> bool:
    created = record.get("created_at")
    seen = record.get("last_seen")
    if not isinstance(created, int | float) or not isinstance(seen, int | float):
        return False  # SECURITY: a record without its timestamps is dead (fail closed)
    return now < created + limits.absolute_lifetime_s and now < seen + limits.idle_timeout_s


def judge(record: dict[str, Any] | None, epoch: object, now: float, limits: Sessions) -> bool:
    """Whether a console-session record is alive now; `epoch` is its principal's counter."""
    if record is None or not alive(record, now, limits):
        return False
    # SECURITY: once logged in, a session outlives no "end every session" of its account.
    return "principal" not in record or (
        isinstance(record["principal"], str) and made_under_current_epoch(record, epoch)
    )


def mfa_fresh(mfa_at: float, now: float, limits: Sessions) -> bool:
    """Whether a login's last TOTP check (`mfa_at`, Clock time) is recent enough to proxy."""
    return now - mfa_at <= limits.mfa_max_age_s


async def touch_if_due(redis: aioredis.Redis, sid: str, record: dict[str, Any], now: float) -> None:
    """Rewrite a live session's last-seen time when TOUCH_EVERY_S has passed since."""
    if now - record["last_seen"] >= TOUCH_EVERY_S:
        record["last_seen"] = now
        # XX: never bring back a session that was ended meanwhile.
        await redis.set(keys.console_session(sid), json.dumps(record), xx=True, keepttl=True)


async def settle(
    redis: aioredis.Redis,
    sid: str,
    raw: bytes | str,
    epoch: bytes | str | None,
    clock: Clock,
    limits: Sessions,
) -> dict[str, Any] | None:
    """The record read for `sid` if it is alive now (touching its last-seen time); a dead
    one is ended on the spot and None returned."""
    record = json_object(raw)
    now = clock.now()
    if record is None or not judge(record, epoch, now, limits):
        principal = record.get("principal") if record is not None else None
        await end_console_session(redis, sid, principal if isinstance(principal, str) else "-")
        return None
    await touch_if_due(redis, sid, record, now)
    return record


@dataclass(frozen=True)
class LuaRead:
    """One call of a read-only Lua script: its text, keys and arguments."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str, ...]

    @property
    def sha(self) -> str:
        return _script_sha(self.script)

    def run(self, redis: aioredis.Redis) -> Awaitable[Any]:
        """Run it alone (EVALSHA; the script is loaded first if Redis lacks it)."""
        return redis.register_script(self.script)(keys=list(self.keys), args=list(self.args))


@functools.cache
def _script_sha(script: str) -> str:
    # Redis names scripts by SHA-1 (EVALSHA); nothing secret is hashed here. Few scripts:
    # each is hashed once per process.
    return hashlib.sha1(script.encode("utf-8"), usedforsecurity=False).hexdigest()


async def read_at_once(redis: aioredis.Redis, reads: Sequence[LuaRead]) -> list[Any]:
    """The replies of `reads`, in order, from one pipelined round trip (EVALSHA each); an
    error reply comes back in its place as the exception. Only when Redis lacks a script
    (restarted, flushed) is it loaded and the reads sent once more."""
    replies = await _evalsha_all(redis, reads)
    missing = {
        read.script
        for read, reply in zip(reads, replies, strict=True)
        if isinstance(reply, NoScriptError)
    }
    if not missing:
        return replies
    for script in sorted(missing):
        await redis.script_load(script)
    return await _evalsha_all(redis, reads)


async def _evalsha_all(redis: aioredis.Redis, reads: Sequence[LuaRead]) -> list[Any]:
    # No registered scripts on the pipeline: redis-py would ask SCRIPT EXISTS first, a
    # second round trip every time.
    async with redis.pipeline(transaction=False) as pipe:
        for read in reads:
            pipe.evalsha(read.sha, len(read.keys), *read.keys, *read.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


def record_read(sid: str) -> LuaRead:
    """The read of session `sid` and its principal's epoch at one instant. Its reply is what
    `live_record` settles and `found_alive` judges."""
    return LuaRead(_READ, (keys.console_session(sid),), (keys.session_epoch(""),))


def found_alive(found: object, now: float, limits: Sessions) -> bool:
    """Whether a `record_read` reply shows a session alive at `now`, by the rule every
    lookup applies (`judge`), without touching it."""
    if not isinstance(found, list) or len(found) != 2:
        return False  # SECURITY: gone, or an unreadable reply: dead (fail closed)
    raw, epoch = found
    return judge(json_object(raw), epoch, now, limits)


async def live_record(
    redis: aioredis.Redis, sid: str, clock: Clock, limits: Sessions
) -> dict[str, Any] | None:
    """The session's data if it is alive now (touching its last-seen time), else None."""
    found = await record_read(sid).run(redis)
    if not isinstance(found, list) or len(found) != 2:
        return None
    raw, epoch = found
    return await settle(redis, sid, raw, epoch, clock, limits)


async def create_login_record(
    redis: aioredis.Redis, sid: str, record: dict[str, Any], ttl: int
) -> bool:
    """Create a logged-in session under the epoch its login read (`record["epoch"]`).

    False (nothing written) when every session of the account was ended since that read,
    or when the record names no principal or epoch.
    """
    principal, epoch = record.get("principal"), record.get("epoch")
    if not isinstance(principal, str) or isinstance(epoch, bool) or not isinstance(epoch, int):
        return False
    outcome = await redis.register_script(_CREATE_LOGIN)(
        keys=[
            keys.console_session(sid),
            keys.session_epoch(principal),
            keys.principal_sessions(principal),
        ],
        args=[json.dumps(record), ttl, sid, str(epoch)],
    )
    # SECURITY: saved only under the epoch read before the credentials were checked.
    return outcome in (b"ok", "ok")
