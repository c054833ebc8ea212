"""App sessions: the host-only session a routed host keeps after a hand-off.

    gw:app-session:<sha256(token)>  JSON {sid, principal, host, created_at}
    gw:app-sessions-of:<sid>        the console session's app sessions

The cookie `__Host-gw_app` (Secure, HttpOnly, SameSite=Lax, Path=/, no Domain) is
valid only on the host it was issued for, and only while its console session is alive:
every lookup re-checks that session by the Clock and against its account's session
epoch, and re-reads the account, so logout, idle timeout, absolute lifetime, disabling
the account and resetting its credentials all end the app session too.

Ending one app session (`/.gateway/logout` on its host) deletes it and publishes
`end-app <app session id>` on the session events channel in one Lua script, so that
every instance ends the in-flight responses and websockets that came with it (`ends`);
its console session and the app sessions of other hosts live on.

A lookup is one round trip (one Lua script reads the app session, its console session,
the account's session epoch and the account, at one instant); every judgement is made
by `judge_app_session`, by the gateway's Clock, on what the script read. The re-check of
in-flight flows (`ends`) sends the same read (`AppSessions.read_of`) for each app session
and judges its reply with the same function, so an open stream lives exactly as long
as a request with its cookie would be let through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts.model import Account
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.identity import Principal
from gateway.sessions.ending import end_console_session
from gateway.sessions.epochs import EPOCH_OF_LUA
from gateway.sessions.records import (
    LuaRead,
    json_object,
    judge,
    sid_of,
    touch_if_due,
    valid_token,
)

# KEYS: console session, app session, app-session set. ARGV: record, ttl, app id.
# Created only while the console session exists: a hand-off never outlives a logout.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""

# KEYS[1]: the app session. ARGV[1]: its id, ARGV[2]: app-session-set key prefix, ARGV[3]:
# the session events channel. Deletes it, leaves its console session's set and announces
# the end in one step (no end goes unannounced); 0 when there was no such app session.
# The set's key is named by the record (which the gateway wrote), checked for shape first.
_END = """
local app = redis.call('GET', KEYS[1])
if not app then return 0 end
redis.call('DEL', KEYS[1])
local ok, record = pcall(cjson.decode, app)
if ok and type(record) == 'table' then
  local sid = record['sid']
  if type(sid) == 'string' and #sid <= 128 and string.match(sid, '^[A-Za-z0-9_%-]+$') then
    redis.call('SREM', ARGV[2] .. sid, ARGV[1])
  end
end
redis.call('PUBLISH', ARGV[3], 'end-app ' .. ARGV[1])
return 1
"""

# KEYS[1]: the app session. ARGV[1]: epoch key prefix, ARGV[2]: console-session key
# prefix, ARGV[3]: staff account key with `{id}`, ARGV[4]: member account key with `{org}`
# and `{id}` (the templates come from gateway.keys, the one key schema).
# {app record, console record, epoch, account hash as a flat list}; {app record} alone
# when it names no usable console session or account; {} when there is no app session.
# The other keys are named by the app record (which the gateway wrote); their parts are
# checked for shape first, so a damaged record can name nothing but a session or account.
_LOOKUP = (
    EPOCH_OF_LUA
    + """
local ID = '^[A-Za-z0-9._%-]+$'
local function account_key(principal)
  local id = string.match(principal, '^staff:([^:]+)$')
  if id and #id <= 64 and string.match(id, ID) then
    return (string.gsub(ARGV[3], '{id}', id))
  end
  local org, member = string.match(principal, '^member:([^:]+):([^:]+)$')
  if org and #org <= 64 and #member <= 64 and string.match(org, ID)
      and string.match(member, ID) then
    return (string.gsub((string.gsub(ARGV[4], '{org}', org)), '{id}', member))
  end
  return false
end
local app = redis.call('GET', KEYS[1])
if not app then return {} end
local ok, record = pcall(cjson.decode, app)
if not ok or type(record) ~= 'table' then return {app} end
local sid, principal = record['sid'], record['principal']
if type(sid) ~= 'string' or #sid > 128 or not string.match(sid, '^[A-Za-z0-9_%-]+$')
    or type(principal) ~= 'string' then
  return {app}
end
local account = account_key(principal)
if not account then return {app} end
local console = redis.call('GET', ARGV[2] .. sid)
if not console then return {app} end
return {app, console, epoch_of(principal), redis.call('HGETALL', account)}
"""
)


@dataclass(frozen=True)
class AppLogin:
    """Who an app-session cookie belongs to, as of this request."""

    principal_key: str
    session_id: str  # the console session it belongs to
    mfa_at: float
    app_session_id: str
    principal: Principal  # the account as read with the session (enabled)


@dataclass(frozen=True)
class AppVerdict:
    """What one read of an app session (`_LOOKUP`'s reply) shows, judged at one instant."""

    login: AppLogin | None = None  # set only when every check passed
    console: dict[str, Any] | None = None  # the live console record read with it (to touch)
    dead_console: str | None = None  # a stored console session found dead: to be ended
    dead_principal: str = "-"  # the principal that dead console session names, if any


NO_APP_LOGIN = AppVerdict()


def judge_app_session(
    found: object, app_session_id: str, host: str, now: float, limits: Sessions
) -> AppVerdict:
    """Judge an app session's read for a request on `host` at `now`: the one rule of the
    session stage (`AppSessions.lookup`) and of the re-check of in-flight flows (`ends`).
    Pure: whatever it finds, the caller acts on it. Any reply it cannot read is no login."""
    if not isinstance(found, list) or not found:
        return NO_APP_LOGIN  # SECURITY: no app session, or an error reply (fail closed)
    record = json_object(found[0])
    if record is None or record.get("host") != host.lower():
        # SECURITY: an app cookie is good only on the routed host it was issued for.
        return NO_APP_LOGIN
    sid, principal = record.get("sid"), record.get("principal")
    if not isinstance(sid, str) or not isinstance(principal, str) or len(found) != 4:
        return NO_APP_LOGIN
    _, raw_console, epoch, raw_account = found
    console = json_object(raw_console)
    # SECURITY: the console session alive by the Clock, made under the current epoch ...
    if console is None or not judge(console, epoch, now, limits):
        named = console.get("principal") if console is not None else None
        return AppVerdict(dead_console=sid, dead_principal=named if isinstance(named, str) else "-")
    # ... and still the same person's login.
    if console.get("principal") != principal:
        return NO_APP_LOGIN
    mfa_at = console.get("mfa_at")
    if isinstance(mfa_at, bool) or not isinstance(mfa_at, int | float):
        return NO_APP_LOGIN
    account = _account(raw_account)
    # SECURITY: the account exists, is the one the session names, and is not disabled.
    if account is None or account.key != principal or account.disabled:
        return NO_APP_LOGIN
    login = AppLogin(principal, sid, float(mfa_at), app_session_id, account.principal)
    return AppVerdict(login=login, console=console)


def _account(raw: object) -> Account | None:
    """The account from a flat HGETALL reply; None when absent or damaged (fail closed)."""
    if not isinstance(raw, list) or not raw or len(raw) % 2:
        return None
    try:
        return Account.from_redis(dict(zip(raw[::2], raw[1::2], strict=True)))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class AppSessions:
    def __init__(self, redis: aioredis.Redis, clock: Clock, limits: Sessions) -> None:
        self._redis = redis
        self._clock = clock
        self._limits = limits
        self._create = redis.register_script(_CREATE)
        self._lookup = redis.register_script(_LOOKUP)
        self._end = redis.register_script(_END)
        self._lookup_args = (
            keys.session_epoch(""),
            keys.console_session(""),
            keys.staff("{id}"),
            keys.member("{org}", "{id}"),
        )

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

    def read_of(self, app_session_id: str) -> LuaRead:
        """The one read a lookup of `app_session_id` makes (the re-check sends it too)."""
        return LuaRead(_LOOKUP, (keys.app_session(app_session_id),), self._lookup_args)

    async def lookup(self, token: str | None, host: str) -> AppLogin | None:
        """The login behind an app-session cookie on `host`, or None; one Redis round trip
        (plus a write when the console session's last-seen time is due, or it just died)."""
        if token is None or not valid_token(token):
            return None
        ident = sid_of(token)
        read = self.read_of(ident)
        found = await self._lookup(keys=list(read.keys), args=list(read.args))
        now = self._clock.now()
        verdict = judge_app_session(found, ident, host, now, self._limits)
        if verdict.dead_console is not None:
            # Found dead: ended on the spot, with every app session of it.
            await end_console_session(self._redis, verdict.dead_console, verdict.dead_principal)
            return None
        if verdict.login is None or verdict.console is None:
            return None
        await touch_if_due(self._redis, verdict.login.session_id, verdict.console, now)
        return verdict.login

    async def end(self, token: str | None) -> bool:
        """End the app session of an app-session cookie and announce it; False when there
        was none."""
        if token is None or not valid_token(token):
            return False
        ident = sid_of(token)
        # SECURITY: deleted and announced in one step: its open streams and websockets end
        # on every instance (`ends`), not when the grant does.
        ended = await self._end(
            keys=[keys.app_session(ident)],
            args=[ident, keys.app_sessions_of(""), keys.session_events_channel()],
        )
        return bool(ended == 1)
