"""App sessions: the host-only session a routed host keeps after a hand-off.

    gw:app-session:<sha256(token)>  JSON {sid, principal, host, created_at}
    gw:app-sessions-of:<sid>        the console session's app sessions

The cookie `__Host-gw_app` (Secure, HttpOnly, SameSite=Lax, Path=/, no Domain) is
valid only on the host it was issued for, and only while its console session is alive:
every lookup re-checks that session by the Clock, so logout, idle timeout, absolute
lifetime and disabling the account all end the app session too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway import keys
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.sessions.records import json_object, live_record, sid_of, valid_token

# KEYS: console session, app session, app-session set. ARGV: record, ttl, app id.
# Created only while the console session exists: a hand-off never outlives a logout.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class AppLogin:
    """Who an app-session cookie belongs to, as of this request."""

    principal_key: str
    session_id: str  # the console session it belongs to
    mfa_at: float
    app_session_id: str


class AppSessions:
    def __init__(self, redis: aioredis.Redis, clock: Clock, limits: Sessions) -> None:
        self._redis = redis
        self._clock = clock
        self._limits = limits
        self._create = redis.register_script(_CREATE)

    async def create(self, token: str, session_id: str, principal_key: str, host: str) -> bool:
        record = {
            "sid": session_id,
            "principal": principal_key,
            "host": host.lower(),
            "created_at": self._clock.now(),
        }
        ident = sid_of(token)
        created = await self._create(
            keys=[
                keys.console_session(session_id),
                keys.app_session(ident),
                keys.app_sessions_of(session_id),
            ],
            args=[json.dumps(record), int(self._limits.absolute_lifetime_s) + 60, ident],
        )
        return bool(created == 1)

    async def lookup(self, token: str | None, host: str) -> AppLogin | None:
        if token is None or not valid_token(token):
            return None
        ident = sid_of(token)
        record = json_object(await self._redis.get(keys.app_session(ident)))
        if record is None or record.get("host") != host.lower():
            # SECURITY: an app cookie is good only on the routed host it was issued for.
            return None
        sid, principal = record.get("sid"), record.get("principal")
        if not isinstance(sid, str) or not isinstance(principal, str):
            return None
        console = await live_record(self._redis, sid, self._clock, self._limits)
        # SECURITY: alive by the Clock, and still the same person's login.
        if console is None or console.get("principal") != principal:
            return None
        mfa_at = console.get("mfa_at")
        if not isinstance(mfa_at, int | float):
            return None
        return AppLogin(principal, sid, float(mfa_at), ident)

    async def end(self, token: str | None) -> None:
        if token is None or not valid_token(token):
            return
        ident = sid_of(token)
        record = json_object(await self._redis.getdel(keys.app_session(ident)))
        sid = record.get("sid") if record is not None else None
        if isinstance(sid, str):
            await self._redis.srem(keys.app_sessions_of(sid), ident)
