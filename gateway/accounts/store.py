"""The account store: orgs, staff and members in Redis (hashes, one per account).

    gw:staff:<id>               hash: Account.to_redis()
    gw:org:<org>                hash: id, name, settings (JSON)
    gw:org:<org>:member:<id>    hash: Account.to_redis()
    gw:email:<email>            the principal key owning that email (unique across all)
    gw:staff, gw:orgs, gw:org:<org>:members   index sets

Writes that touch an email are Lua scripts, so two creations racing for one email end
with one owner. Passwords are kept as scrypt hashes, TOTP secrets sealed with a key that
is not in Redis (`TotpSecretBox`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.events import member_changed, org_changed
from gateway.accounts.errors import AccountConflict, AccountNotFound, InvalidAccountInput
from gateway.accounts.model import (
    Account,
    check_email,
    check_id,
    check_name,
    check_new_password,
    check_role,
    redis_key,
    text,
)
from gateway.accounts.passwords import PasswordHasher
from gateway.accounts.secretbox import TotpSecretBox
from gateway.accounts.totp import is_valid_secret
from gateway.identity import Principal, PrincipalKind
from gateway.sessions.ending import end_sessions_of

# KEYS: account hash, new email key, old email key (or same), index set.
# ARGV: principal key, mode (create|update), member id for the index, then field pairs.
_PUT = """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 'email' end
local exists = redis.call('EXISTS', KEYS[1])
if ARGV[2] == 'create' and exists == 1 then return 'exists' end
if ARGV[2] == 'update' and exists == 0 then return 'missing' end
if KEYS[3] ~= KEYS[2] then
  local old = redis.call('GET', KEYS[3])
  if old == ARGV[1] then redis.call('DEL', KEYS[3]) end
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
return 'ok'
"""


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

    # --- orgs ---------------------------------------------------------------------------
    async def put_org(self, org_id: str, name: str, settings: dict[str, Any] | None = None) -> Org:
        """Create or update an org (idempotent); settings replace only when given."""
        check_id(org_id, "org")
        check_name(name)
        fields: dict[str, str] = {"id": org_id, "name": name}
        if settings is not None:
            fields["settings"] = json.dumps(settings, sort_keys=True)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.org(org_id), mapping=fields)  # type: ignore[arg-type]
            pipe.hsetnx(keys.org(org_id), "settings", "{}")
            pipe.sadd(keys.org_index(), org_id)
            await pipe.execute()
        if settings is not None:
            # Cached grant checks judged the old settings (e.g. whether admins may be acted as).
            await org_changed(self.redis, org_id)
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

    async def staff_ids(self) -> list[str]:
        return sorted(text(v) for v in await self.redis.smembers(keys.staff_index()))

    async def member_ids(self, org_id: str) -> list[str]:
        members = await self.redis.smembers(keys.org_members(check_id(org_id, "org")))
        return sorted(text(v) for v in members)

    async def put_staff(
        self, staff_id: str, email: str, name: str, *, create: bool = True
    ) -> Account:
        principal = Principal(
            PrincipalKind.STAFF, check_id(staff_id), check_email(email), check_name(name)
        )
        return await self._put_account(principal, True, create=create)

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
        return await self._put_account(principal, impersonable, create=create)

    async def _put_account(
        self, principal: Principal, impersonable: bool, *, create: bool
    ) -> Account:
        existing = await self.get(principal.key)
        if create and existing is not None:
            raise AccountConflict(f"account {principal.key} exists already")
        if not create and existing is None:
            raise AccountNotFound(f"no account {principal.key}")
        base = existing or Account(principal, "", "", disabled=False)
        account = replace(base, principal=principal, impersonable=impersonable)
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
        args: list[str] = [principal.key, "create" if create else "update", index_member]
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
        if principal.kind is PrincipalKind.MEMBER and existing is not None:
            # Live-grant checks cache the member's account: they re-read it now.
            await member_changed(self.redis, principal.org or "", principal.id)
        return await self.require(principal.key)

    # --- secrets ------------------------------------------------------------------------
    async def set_password(self, principal_key: str, password: str) -> int:
        """Set a new password; every session of the old credentials ends. Returns how many."""
        check_new_password(password)
        await self.require(principal_key)
        hashed = await self.hasher.hash(password)
        await self.redis.hset(redis_key(principal_key), "password_hash", hashed)
        # SECURITY: a reset password usually means a leaked one; its sessions go with it.
        return await self.end_sessions(principal_key)

    async def end_sessions(self, principal_key: str) -> int:
        """End every console session (and its app sessions) of one account."""
        return await end_sessions_of(self.redis, principal_key)

    async def set_totp_secret(self, principal_key: str, secret: str) -> None:
        if not is_valid_secret(secret):
            raise InvalidAccountInput(
                "totp_secret: expected base32 (A-Z, 2-7), 16 to 128 characters"
            )
        await self.require(principal_key)
        await self.redis.hset(
            redis_key(principal_key),
            mapping={"totp_secret": self.box.seal(secret, principal_key), "enrolment_token": ""},
        )

    def totp_secret(self, account: Account) -> str:
        """The plain TOTP secret of an enrolled account (SecretKeyError if tampered)."""
        return self.box.open(account.totp_secret, account.key)

    async def set_disabled(self, principal_key: str, disabled: bool) -> int:
        """Disable (ending every session at once) or enable; returns sessions ended."""
        await self.require(principal_key)
        await self.redis.hset(redis_key(principal_key), "disabled", "1" if disabled else "0")
        if principal_key.startswith("member:"):
            _, org, member_id = principal_key.split(":", 2)
            # Live-grant checks cache the member's account: they re-read it now.
            await member_changed(self.redis, org, member_id)
        # SECURITY: a disabled account keeps no session, console or app, anywhere.
        return await self.end_sessions(principal_key) if disabled else 0
