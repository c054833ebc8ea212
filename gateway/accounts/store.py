"""The account store: orgs, staff and members in Redis (hashes, one per account).

    gw:staff:<id>               hash: Account.to_redis()
    gw:org:<org>                hash: id, name, settings (JSON)
    gw:org:<org>:member:<id>    hash: Account.to_redis()
    gw:email:<email>            the principal key owning that email (unique across all)
    gw:staff, gw:orgs, gw:org:<org>:members   index sets

Writes that touch an email are Lua scripts, so two creations racing for one email end
with one owner. A write that changes what grant checks answer (a member's account, an
org's settings) publishes its `gateway.access.events` event from the same script, after
its writes: no instance keeps a cached answer about a change it never heard of.
Passwords are kept as scrypt hashes, TOTP secrets sealed with a key that is not in Redis
(`TotpSecretBox`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway import keys
from gateway.access.events import NO_EVENT, member_changed, org_changed, publish_lua
from gateway.accounts.errors import (
    AccountConflict,
    AccountError,
    AccountNotFound,
    InvalidAccountInput,
)
from gateway.accounts.model import (
    Account,
    check_email,
    check_id,
    check_name,
    check_new_password,
    check_person,
    check_role,
    redis_key,
    text,
)
from gateway.accounts.passwords import PasswordHasher
from gateway.accounts.secretbox import TotpSecretBox
from gateway.accounts.totp import is_valid_secret
from gateway.identity import Principal, PrincipalKind
from gateway.sessions.ending import end_sessions_of
from gateway.sessions.epochs import epoch_value

# A script makes no write before it knows none can fail (Lua undoes nothing): a key of
# another type is refused up front, so a write never lands without its event.
_WRONG_TYPE = """
local function wrong_type(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind)
  end
  return false
end
"""

# KEYS: account hash, new email key, old email key (or same), index set.
# ARGV: principal key, mode (create|update), member id for the index, event channel and
# message (channel '' for none), then field pairs.
_PUT = (
    _WRONG_TYPE
    + """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 'email' end
local exists = redis.call('EXISTS', KEYS[1])
if ARGV[2] == 'create' and exists == 1 then return 'exists' end
if ARGV[2] == 'update' and exists == 0 then return 'missing' end
local bad = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[4], 'set')
if bad then return bad end
if KEYS[3] ~= KEYS[2] then
  local old = redis.call('GET', KEYS[3])
  if old == ARGV[1] then redis.call('DEL', KEYS[3]) end
end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
"""
    + publish_lua(4)
    + """
return 'ok'
"""
)

# KEYS: org hash, org index. ARGV: org id, event channel and message (channel '' for
# none), then field pairs.
_PUT_ORG = (
    _WRONG_TYPE
    + """
local bad = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[2], 'set')
if bad then return bad end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSETNX', KEYS[1], 'settings', '{}')
redis.call('SADD', KEYS[2], ARGV[1])
"""
    + publish_lua(2)
    + """
return 'ok'
"""
)

# KEYS: account hash. ARGV: event channel and message (channel '' for none), then field
# pairs. Returns 0 (nothing written) when the account does not exist.
_SET_FIELDS = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
"""
    + publish_lua(1)
    + """
return 1
"""
)


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    settings: dict[str, Any]


class AccountStore:
    def __init__(self, redis: aioredis.Redis, box: TotpSecretBox, hasher: PasswordHasher) -> None:
        self.redis = redis
        self.box = box
        self.hasher = hasher
        self._put = redis.register_script(_PUT)
        self._put_org = redis.register_script(_PUT_ORG)
        self._set_fields = redis.register_script(_SET_FIELDS)

    # --- orgs ---------------------------------------------------------------------------
    async def put_org(self, org_id: str, name: str, settings: dict[str, Any] | None = None) -> Org:
        """Create or update an org (idempotent); settings replace only when given."""
        check_id(org_id, "org")
        check_name(name)
        fields: dict[str, str] = {"id": org_id, "name": name}
        event = NO_EVENT
        if settings is not None:
            fields["settings"] = json.dumps(settings, sort_keys=True)
            # SECURITY: cached grant checks judged the old settings (e.g. whether admins may
            # be acted as); the event goes out in the write's own script, or neither happens.
            event = org_changed(org_id)
        args: list[str] = [org_id, *event]
        for field_name, value in fields.items():
            args += [field_name, value]
        await self._put_org(keys=[keys.org(org_id), keys.org_index()], args=args)
        org = await self.org(org_id)
        if org is None:
            raise AccountNotFound(f"org {org_id!r} vanished while being written")
        return org

    async def org(self, org_id: str) -> Org | None:
        raw = await self.redis.hgetall(keys.org(check_id(org_id, "org")))
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        return Org(fields["id"], fields.get("name", ""), json.loads(fields.get("settings", "{}")))

    async def orgs(self) -> list[str]:
        return sorted(text(v) for v in await self.redis.smembers(keys.org_index()))

    # --- accounts -----------------------------------------------------------------------
    async def get(self, principal_key: str) -> Account | None:
        raw = await self.redis.hgetall(redis_key(principal_key))
        return Account.from_redis(raw) if raw else None

    async def require(self, principal_key: str) -> Account:
        account = await self.get(principal_key)
        if account is None:
            raise AccountNotFound(f"no account {principal_key}")
        return account

    async def by_email(self, email: str) -> Account | None:
        try:
            normal = check_email(email)
        except InvalidAccountInput:
            return None
        owner = await self.redis.get(keys.account_by_email(normal))
        return await self.get(text(owner)) if owner else None

    async def by_email_with_epoch(self, email: str) -> tuple[Account, int] | None:
        """The account owning `email` and its session epoch, read at one instant (MULTI).

        A login reads this before it checks any credential. Whatever ends every session of
        the account changes the account first and raises the epoch after, so a login that
        read the old credentials also read the old epoch and cannot save its session.
        """
        try:
            normal = check_email(email)
        except InvalidAccountInput:
            return None
        owner = await self.redis.get(keys.account_by_email(normal))
        if not owner:
            return None
        principal_key = text(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.session_epoch(principal_key))
            pipe.hgetall(redis_key(principal_key))
            raw_epoch, raw = await pipe.execute()
        if not raw:
            return None
        epoch = epoch_value(raw_epoch)
        if epoch is None:
            # SECURITY: fail closed; a counter that is no integer cannot be compared.
            raise AccountError(f"session epoch of {principal_key} is damaged: {raw_epoch!r}")
        return Account.from_redis(raw), epoch

    async def staff_ids(self) -> list[str]:
        return sorted(text(v) for v in await self.redis.smembers(keys.staff_index()))

    async def member_ids(self, org_id: str) -> list[str]:
        members = await self.redis.smembers(keys.org_members(check_id(org_id, "org")))
        return sorted(text(v) for v in members)

    async def put_staff(
        self, staff_id: str, email: str, name: str, *, create: bool = True, person: str = ""
    ) -> Account:
        """Create (or with create=False update) a staff account; `person` links it to the
        other accounts of one person ('' = its own person)."""
        principal = Principal(
            PrincipalKind.STAFF, check_id(staff_id), check_email(email), check_name(name)
        )
        return await self._put_account(principal, True, create=create, person=person)

    async def put_member(
        self,
        org_id: str,
        member_id: str,
        email: str,
        name: str,
        role: str,
        *,
        impersonable: bool = True,
        create: bool = True,
        person: str = "",
    ) -> Account:
        if await self.org(org_id) is None:
            raise AccountNotFound(f"no org {org_id!r}")
        principal = Principal(
            PrincipalKind.MEMBER,
            check_id(member_id),
            check_email(email),
            check_name(name),
            org=org_id,
            role=check_role(role),
        )
        return await self._put_account(principal, impersonable, create=create, person=person)

    async def _put_account(
        self, principal: Principal, impersonable: bool, *, create: bool, person: str
    ) -> Account:
        if person:
            person = check_person(person)
        existing = await self.get(principal.key)
        if create and existing is not None:
            raise AccountConflict(f"account {principal.key} exists already")
        if not create and existing is None:
            raise AccountNotFound(f"no account {principal.key}")
        base = existing or Account(principal, "", "", disabled=False)
        account = replace(base, principal=principal, impersonable=impersonable, person=person)
        fields = account.to_redis()
        # Secrets are written only by their own methods, never by a profile update.
        for secret_field in ("password_hash", "totp_secret", "enrolment_token", "disabled"):
            if existing is not None:
                fields.pop(secret_field)
        if principal.kind is PrincipalKind.STAFF:
            index, index_member = keys.staff_index(), principal.id
        else:
            index, index_member = keys.org_members(principal.org or ""), principal.id
        old_email = keys.account_by_email(existing.principal.email if existing else principal.email)
        event = NO_EVENT
        if principal.kind is PrincipalKind.MEMBER and not create:
            # SECURITY: live-grant checks cache the member's account; the event that makes
            # them re-read it goes out in the write's own script, or neither happens.
            event = member_changed(principal.org or "", principal.id)
        args: list[str] = [principal.key, "create" if create else "update", index_member, *event]
        for name, value in fields.items():
            args += [name, value]
        result = await self._put(
            keys=[
                redis_key(principal.key),
                keys.account_by_email(principal.email),
                old_email,
                index,
            ],
            args=args,
        )
        outcome = result.decode() if isinstance(result, bytes) else str(result)
        if outcome == "email":
            raise AccountConflict(f"email {principal.email} belongs to another account")
        if outcome == "exists":
            raise AccountConflict(f"account {principal.key} exists already")
        if outcome == "missing":
            raise AccountNotFound(f"no account {principal.key}")
        return await self.require(principal.key)

    # --- secrets ------------------------------------------------------------------------
    async def set_password(self, principal_key: str, password: str) -> int:
        """Set a new password; every session of the old credentials ends. Returns how many."""
        check_new_password(password)
        await self.require(principal_key)
        hashed = await self.hasher.hash(password)
        # SECURITY: a reset password usually means a leaked one; its sessions go with it,
        # in the same step as the new hash (never one without the other).
        return await self.change_credential(principal_key, {"password_hash": hashed})

    async def end_sessions(self, principal_key: str) -> int:
        """End every console session (and its app sessions) of one account, and every login
        of it under way (its session epoch is raised in the same step)."""
        return await end_sessions_of(self.redis, principal_key)

    async def change_credential(
        self,
        principal_key: str,
        fields: Mapping[str, str],
        *,
        event: tuple[str, str] = NO_EVENT,
    ) -> int:
        """Write `fields` (a credential, or the disabled flag) into the account and end every
        session of it, in one Redis step that also publishes `event`; returns how many
        sessions ended. AccountNotFound, nothing written, when the account is gone."""
        try:
            # SECURITY: never a changed credential whose sessions live on (one script).
            return await end_sessions_of(
                self.redis,
                principal_key,
                account_key=redis_key(principal_key),
                credential=fields,
                event=event,
            )
        except ResponseError as exc:
            if str(exc).startswith("NOACCOUNT"):
                raise AccountNotFound(f"no account {principal_key}") from exc
            raise

    async def set_totp_secret(self, principal_key: str, secret: str) -> int:
        """Set the TOTP secret (the directory file's); every session made with an earlier
        one ends. Returns how many."""
        if not is_valid_secret(secret):
            raise InvalidAccountInput(
                "totp_secret: expected base32 (A-Z, 2-7), 16 to 128 characters"
            )
        replaced = (await self.require(principal_key)).enrolled
        fields = {"totp_secret": self.box.seal(secret, principal_key), "enrolment_token": ""}
        if not replaced:
            # An account without a second factor had no login to end.
            await self.redis.hset(redis_key(principal_key), mapping=dict(fields.items()))
            return 0
        # SECURITY: as with a TOTP reset, a replaced second factor ends what the old made,
        # in the same step as the new secret (never one without the other).
        return await self.change_credential(principal_key, fields)

    def totp_secret(self, account: Account) -> str:
        """The plain TOTP secret of an enrolled account (SecretKeyError if tampered)."""
        return self.box.open(account.totp_secret, account.key)

    async def set_disabled(self, principal_key: str, disabled: bool) -> int:
        """Disable (ending every session at once) or enable; returns sessions ended."""
        account_key = redis_key(principal_key)  # refuses a malformed principal key
        event = NO_EVENT
        if principal_key.startswith("member:"):
            _, org, member_id = principal_key.split(":", 2)
            # SECURITY: live-grant checks cache the member's account; the event that makes
            # them re-read it goes out in the write's own script, or neither happens.
            event = member_changed(org, member_id)
        if disabled:
            # SECURITY: a disabled account keeps no session, console or app, anywhere: the
            # flag, the raised epoch, the ended sessions and the event are one script.
            return await self.change_credential(principal_key, {"disabled": "1"}, event=event)
        written = await self._set_fields(keys=[account_key], args=[*event, "disabled", "0"])
        if not written:
            raise AccountNotFound(f"no account {principal_key}")
        return 0
