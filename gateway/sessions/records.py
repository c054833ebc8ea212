"""Console-session records in Redis and the rule that decides whether one is still alive.

    gw:session:<sid>           JSON: {created_at, last_seen, ...session data}
    gw:sessions-of:<principal> set of sids          (to end them all, e.g. on disable)
    gw:app-sessions-of:<sid>   set of app-session ids (they die with the console session)

`sid` is the SHA-256 of the cookie's token: Redis (and the audit, which names sessions
by sid) never holds a usable cookie. A session is alive while the Clock says it is
younger than the absolute lifetime and was seen within the idle timeout; a dead one is
ended (with its app sessions) the moment it is found dead.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, TypeGuard

import redis.asyncio as aioredis

from gateway import keys
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.sessions.ending import end_console_session

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
# Seen-at is rewritten at most this often: idle timeouts are minutes, not seconds.
TOUCH_EVERY_S = 15.0


def sid_of(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def valid_token(token: object) -> TypeGuard[str]:
    return isinstance(token, str) and TOKEN_PATTERN.fullmatch(token) is not None


def json_object(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored JSON object, or None when absent or not one (a damaged record counts as none)."""
    if raw is None:
        return None
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


async def live_record(
    redis: aioredis.Redis, sid: str, clock: Clock, limits: Sessions
) -> dict[str, Any] | None:
    """The session's data if it is alive now (touching its last-seen time), else None."""
    raw = await redis.get(keys.console_session(sid))
    if raw is None:
        return None
    record = json_object(raw)
    now = clock.now()
    if record is None or not alive(record, now, limits):
        principal = record.get("principal") if record is not None else None
        await end_console_session(redis, sid, principal if isinstance(principal, str) else "-")
        return None
    if now - record["last_seen"] >= TOUCH_EVERY_S:
        record["last_seen"] = now
        # XX: never bring back a session that was ended meanwhile.
        await redis.set(keys.console_session(sid), json.dumps(record), xx=True, keepttl=True)
    return record
