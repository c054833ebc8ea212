"""What the access workflow reads about accounts: orgs, members, roles, approvers, persons.

Accounts are written by `gateway.accounts`; this module only reads their hashes
(`keys.org`, `keys.member`, `keys.org_members`, `keys.staff`) and owns the explicit
approvers list (`keys.org_approvers`). Approvers are every enabled member with role
`admin`, unless the org names an explicit list; the transition scripts apply the same rule
atomically, so the list in force at decision time is the one that counts.

Accounts that name the same `person` id (the directory file's `person:`) are one person:
nobody decides a request filed by any account of theirs, and approvals count people, not
accounts. An account naming no person is its own person. `who(...)` is the one rule,
mirrored by `person_of` in lua/common.lua.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.errors import AccessInvalid, AccessNotFound
from gateway.access.text import as_text, check_id

MAX_APPROVERS = 200


@dataclass(frozen=True)
class Member:
    org: str
    id: str
    email: str
    name: str
    role: str
    impersonable: bool
    disabled: bool
    person: str = ""  # the person id shared by linked accounts; '' = its own person

    @property
    def key(self) -> str:
        return f"member:{self.org}:{self.id}"

    @property
    def who(self) -> str:
        """The person this account is (see `who`)."""
        return who(self.key, self.person)


def who(principal_key: str, person: str) -> str:
    """The person an account is: its `person` link, else the account itself. The prefixes
    keep the two apart (a person id has no ':')."""
    return f"person:{person}" if person else f"account:{principal_key}"


def account_key(principal_key: str) -> str | None:
    """The Redis key of the account hash of `staff:<id>` or `member:<org>:<id>`; None when the
    principal key is not of either shape."""
    parts = principal_key.split(":")
    try:
        if len(parts) == 2 and parts[0] == "staff":
            return keys.staff(check_id(parts[1], "staff"))
        if len(parts) == 3 and parts[0] == "member":
            return keys.member(check_id(parts[1], "org"), check_id(parts[2], "member"))
    except AccessInvalid:
        return None
    return None


async def person_of(redis: aioredis.Redis, principal_key: str) -> str:
    """The person an account is (`who`), as stored now; a gone account is its own person."""
    key = account_key(principal_key)
    raw = await redis.hget(key, "person") if key is not None else None
    return who(principal_key, as_text(raw) if raw else "")


async def org_exists(redis: aioredis.Redis, org: str) -> bool:
    return bool(await redis.exists(keys.org(org)))


async def member(redis: aioredis.Redis, org: str, member_id: str) -> Member | None:
    raw = await redis.hgetall(keys.member(org, member_id))
    if not raw:
        return None
    f = {as_text(k): as_text(v) for k, v in raw.items()}
    return Member(
        org=org,
        id=member_id,
        email=f.get("email", ""),
        name=f.get("name", ""),
        role=f.get("role", ""),
        impersonable=f.get("impersonable", "1") == "1",
        disabled=f.get("disabled") == "1",
        person=f.get("person", ""),
    )


async def members(redis: aioredis.Redis, org: str) -> list[Member]:
    ids = sorted(as_text(i) for i in await redis.smembers(keys.org_members(org)))
    found = [await member(redis, org, i) for i in ids]
    return [m for m in found if m is not None]


async def explicit_approvers(redis: aioredis.Redis, org: str) -> list[str]:
    raw = await redis.smembers(keys.org_approvers(org))
    return sorted(as_text(i) for i in raw)


async def approvers(redis: aioredis.Redis, org: str) -> list[Member]:
    """The approvers in force now: the explicit list if the org has one, else its admins."""
    explicit = set(await explicit_approvers(redis, org))
    everyone = await members(redis, org)
    if explicit:
        return [m for m in everyone if m.id in explicit and not m.disabled]
    return [m for m in everyone if m.role == "admin" and not m.disabled]


async def set_approvers(redis: aioredis.Redis, org: str, member_ids: Iterable[object]) -> list[str]:
    """Replace the org's explicit approvers list (empty: back to every admin).

    Every id must name a member of the org; on any problem nothing changes.
    """
    if not await org_exists(redis, org):
        raise AccessNotFound("no_such_org", f"no org {org!r}")
    ids: list[str] = []
    for value in member_ids:
        ids.append(check_id(value, "approver"))
    if len(ids) > MAX_APPROVERS:
        raise AccessInvalid("invalid_approvers", f"at most {MAX_APPROVERS} approvers")
    unknown = [i for i in ids if await member(redis, org, i) is None]
    if unknown:
        raise AccessInvalid(
            "invalid_approvers", f"not members of {org}: {', '.join(sorted(set(unknown)))}"
        )
    key = keys.org_approvers(org)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if ids:
            pipe.sadd(key, *ids)
        await pipe.execute()
    return sorted(set(ids))
