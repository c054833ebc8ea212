"""Ending sessions: a console session and every app session that refers to it.

Used by logout (one console session) and by disabling an account (all of them at once).
Each end is published on the session events channel so that instances holding
in-flight responses can drop them.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway import keys

# KEYS[1]: the console session, KEYS[2]: its app-session set, KEYS[3]: the principal's set.
# ARGV[1]: the session id, ARGV[2]: app-session key prefix. Deletes all in one step.
_END = """
local apps = redis.call('SMEMBERS', KEYS[2])
for _, app in ipairs(apps) do redis.call('DEL', ARGV[2] .. app) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return #apps
"""


async def end_console_session(redis: aioredis.Redis, session_id: str, principal_key: str) -> None:
    prefix = keys.app_session("")
    await redis.eval(
        _END,
        3,
        keys.console_session(session_id),
        keys.app_sessions_of(session_id),
        keys.principal_sessions(principal_key),
        session_id,
        prefix,
    )
    await redis.publish(keys.session_events_channel(), f"end {session_id}")


async def end_sessions_of(redis: aioredis.Redis, principal_key: str) -> int:
    """End every console session (and its app sessions) of one principal; returns how many."""
    ids = await redis.smembers(keys.principal_sessions(principal_key))
    for raw in ids:
        await end_console_session(
            redis, raw.decode() if isinstance(raw, bytes) else raw, principal_key
        )
    return len(ids)
