"""Ending sessions: a console session and every app session that refers to it.

Used by logout (one console session) and by disabling an account or resetting its
credentials (all of them at once: the account's session epoch is raised in the same
script, so a login under way when that happens cannot save its session afterwards; see
`epochs`). Each end is published on the session events channel (`end <session id>`) by
the same script that deletes the session, so that every instance ends the in-flight
responses and websockets of that login (`ends`): no end goes unannounced, even if this
process dies right after the script.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from gateway import keys

# KEYS[1]: the console session, KEYS[2]: its app-session set, KEYS[3]: the principal's set.
# ARGV[1]: the session id, ARGV[2]: app-session key prefix, ARGV[3]: the session events
# channel. Deletes all in one step and announces it.
_END = """
local apps = redis.call('SMEMBERS', KEYS[2])
for _, app in ipairs(apps) do redis.call('DEL', ARGV[2] .. app) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[3], 'end ' .. ARGV[1])
return #apps
"""

# KEYS[1]: the principal's session set, KEYS[2]: the principal's session epoch,
# KEYS[3]: the account hash. ARGV: console-session, app-session-set and app-session key
# prefixes, the session events channel, a grant event (channel and message, channel ''
# for none: `gateway.access.events`, published last), then field pairs to write into the
# account first (a new credential, or the disabled flag).
# Writes the credential, raises the epoch and deletes every session in one step: a login
# that read the old epoch can no longer save (records._CREATE_LOGIN), and one saved before
# is deleted here. Lua undoes nothing, so whatever could refuse is checked before any
# write: a credential never lands without the end of the sessions it replaces.
_END_ALL = """
local function kind(key) return redis.call('TYPE', key)['ok'] end
if kind(KEYS[1]) ~= 'none' and kind(KEYS[1]) ~= 'set' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is no set of sessions')
end
-- An epoch INCR can raise: digits only, and few enough never to overflow.
local epoch_kind = kind(KEYS[2])
if epoch_kind ~= 'none'
    and (epoch_kind ~= 'string' or not string.match(redis.call('GET', KEYS[2]), '^%d+$')
         or #redis.call('GET', KEYS[2]) > 18) then
  return redis.error_reply('DAMAGED ' .. KEYS[2] .. ' is no session epoch')
end
if #ARGV > 6 then
  local account_kind = kind(KEYS[3])
  if account_kind == 'none' then
    return redis.error_reply('NOACCOUNT ' .. KEYS[3] .. ' is no account')
  elseif account_kind ~= 'hash' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[3] .. ' holds a ' .. account_kind)
  end
  for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
end
redis.call('INCR', KEYS[2])
local sids = redis.call('SMEMBERS', KEYS[1])
for _, sid in ipairs(sids) do
  local apps = redis.call('SMEMBERS', ARGV[2] .. sid)
  for _, app in ipairs(apps) do redis.call('DEL', ARGV[3] .. app) end
  redis.call('DEL', ARGV[1] .. sid, ARGV[2] .. sid)
  redis.call('PUBLISH', ARGV[4], 'end ' .. sid)
end
redis.call('DEL', KEYS[1])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return sids
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
        keys.session_events_channel(),
    )


async def end_sessions_of(
    redis: aioredis.Redis,
    principal_key: str,
    *,
    account_key: str = "",
    credential: Mapping[str, str] | None = None,
    event: tuple[str, str] = ("", ""),
) -> int:
    """End every console session (and its app sessions) of one principal, and every login
    of it under way; returns how many sessions ended. With `credential`, its fields are
    first written into the account hash `account_key`, in the same step (or nothing is
    written and the Redis error raised); `event`, a (channel, message) pair, is published
    by that same step after its writes."""
    fields = [part for pair in (credential or {}).items() for part in pair]
    # SECURITY: credential written, epoch raised and sessions deleted atomically (no login
    # slips in between, and no credential changes without its sessions ending).
    ended = await redis.register_script(_END_ALL)(
        keys=[
            keys.principal_sessions(principal_key),
            keys.session_epoch(principal_key),
            account_key or keys.session_epoch(principal_key),
        ],
        args=[
            keys.console_session(""),
            keys.app_sessions_of(""),
            keys.app_session(""),
            keys.session_events_channel(),
            *event,
            *fields,
        ],
    )
    return len(ended)
