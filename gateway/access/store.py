"""The access store: every access-workflow read and state change, against Redis.

Each state change is one atomic transition script (gateway/access/lua) decided by the
gateway's Clock, passed in as `now`; none reads Redis TIME and none relies on key TTLs.
Every script appends its event to the outbox stream (`keys.access_outbox()`, read by
`gateway.access.notices`) and publishes it on `keys.grant_events_channel()` in the same
atomic step, so a change and its notice can never part.

    store = AccessStore(redis, clock)
    request = await store.file(sam, org="acme", member="bob", justification="TICKET-1 ...",
                               duration_s=3600, scope="read")
    await store.approve(request.id, alice)
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from gateway import keys
from gateway.access import directory
from gateway.access.errors import (
    AccessConflict,
    AccessError,
    AccessForbidden,
    AccessInvalid,
    AccessNotFound,
    AccessUnavailable,
)
from gateway.access.model import AccessRequest, HistoryEntry, RequestKind, RequestState
from gateway.access.scripts import TransitionScripts
from gateway.access.settings import (
    MAX_JUSTIFICATION,
    MAX_TICKET_SCAN,
    OrgSettings,
    load_settings,
    settings_from,
)
from gateway.access.text import as_text, check_id
from gateway.clock import Clock
from gateway.identity import ActingGrant, Principal, PrincipalKind
from policies.model import Scope

_T = TypeVar("_T")

MAX_COMMENT = 2000
MAX_LIST = 500

# Script refusals -> the exception (and so the HTTP status) the caller sees.
_REFUSALS: dict[str, type[AccessError]] = {
    "not_found": AccessNotFound,
    "wrong_state": AccessConflict,
    "live_grant_exists": AccessConflict,
    "already_approved": AccessConflict,
    "duplicate_id": AccessConflict,
    "self_approval": AccessForbidden,
    "not_approver": AccessForbidden,
    "not_admin": AccessForbidden,
    "invalid_duration": AccessInvalid,
    "invalid_scope": AccessInvalid,
}


@dataclass(frozen=True)
class GrantCheck:
    """The answer to "may this principal act in this org right now?"."""

    grant: ActingGrant | None
    # None when granted, else no_grant | grant_expired | grant_revoked | member_not_impersonable
    error: str | None
    reason: str


# The live-grant pointer, the hash of the member it acts as, the org's settings and, when
# the actor is a customer admin (an impersonation), the admin's own account, in one round
# trip. KEYS[1]: the pointer; KEYS[2]: the org hash; ARGV[1]: the org's member key with
# '{id}' for the member id.
_READ_GRANT = """
local pointer = redis.call('HGETALL', KEYS[1])
local settings = redis.call('HGET', KEYS[2], 'settings') or ''
local fields = {}
for i = 1, #pointer, 2 do fields[pointer[i]] = pointer[i + 1] end
local function account(id)
  if not id then return {} end
  local key = string.gsub(ARGV[1], '{id}', function() return id end)
  return redis.call('HGETALL', key)
end
local actor = {}
if fields.actor_kind == 'member' then actor = account(fields.actor_id) end
return {pointer, account(fields.member), settings, actor}
"""


@dataclass(frozen=True)
class GrantFacts:
    """What a grant check reads: the live-grant pointer, its member's account fields and
    whether the org lets admins be acted as (read in the same round trip)."""

    pointer: dict[str, str]
    member: dict[str, str]  # empty when the member's account does not exist
    admins_impersonable: bool = False
    # The acting customer admin's own account (an impersonation's actor); empty when the
    # actor is staff, or when the admin's account does not exist.
    actor: dict[str, str] = field(default_factory=dict)


class GrantReader:
    """Reads `GrantFacts` for (actor, org) in one atomic round trip (a Lua script); for
    many pairs at once, in one pipelined round trip (`read_many`)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_READ_GRANT)

    async def read(self, actor_key: str, org: str) -> GrantFacts:
        raw: Any = await self._script(
            keys=[keys.live_grant(actor_key, org), keys.org(org)], args=[keys.member(org, "{id}")]
        )
        return _facts(raw, org)

    async def read_many(self, pairs: Sequence[tuple[str, str]]) -> list[GrantFacts]:
        """`read` of every (actor, org) in `pairs`, in their order; each read is atomic."""
        if not pairs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for actor_key, org in pairs:
                await self._script(
                    keys=[keys.live_grant(actor_key, org), keys.org(org)],
                    args=[keys.member(org, "{id}")],
                    client=pipe,
                )
            replies: list[Any] = await pipe.execute()
        return [_facts(raw, org) for raw, (_, org) in zip(replies, pairs, strict=True)]


def _facts(raw: Any, org: str) -> GrantFacts:
    pointer, member, settings, actor = raw
    try:
        admins = settings_from(settings, org).admins_impersonable
    except AccessInvalid:
        admins = False  # SECURITY: unreadable settings allow nothing extra
    return GrantFacts(_pairs(pointer), _pairs(member), admins, _pairs(actor))


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def check_duration(value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AccessInvalid("invalid_duration", f"duration_s {value!r}: expected whole seconds")
    if value <= 0:
        raise AccessInvalid("invalid_duration", f"duration_s {value}: must be above 0")
    if value > maximum:
        raise AccessInvalid(
            "duration_too_long", f"duration_s {value}: the org allows at most {maximum}"
        )
    return value


def check_scope(value: object) -> Scope:
    if value not in ("read", "write"):
        raise AccessInvalid("invalid_scope", f"scope {value!r}: expected read or write")
    return Scope(str(value))


def _check_characters(text: str, what: str) -> str:
    # A lone surrogate (JSON allows "\ud800") cannot be stored as UTF-8 at all, and control
    # characters have no place in a note that is mailed and audited: both are refused here,
    # before anything is stored, rather than failing half-way inside Redis.
    if any(0xD800 <= ord(c) <= 0xDFFF or (ord(c) < 0x20 and c not in "\t\n\r") for c in text):
        raise AccessInvalid(
            f"invalid_{what}", f"{what}: no control characters or unpaired surrogates"
        )
    return text


def check_comment(value: object, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > MAX_COMMENT:
        raise AccessInvalid("invalid_comment", f"comment: expected text of at most {MAX_COMMENT}")
    _check_characters(value, "comment")
    if required and not value.strip():
        raise AccessInvalid("comment_required", "a comment is required")
    return value


def check_justification(value: object, settings: OrgSettings) -> str:
    if not isinstance(value, str):
        raise AccessInvalid("invalid_justification", "justification: expected text")
    text = value.strip()
    if len(text) > MAX_JUSTIFICATION:
        raise AccessInvalid(
            "invalid_justification", f"justification: at most {MAX_JUSTIFICATION} characters"
        )
    _check_characters(text, "justification")
    if len(text) < settings.justification_min_length:
        raise AccessInvalid(
            "justification_too_short",
            f"justification: at least {settings.justification_min_length} characters",
        )
    pattern = settings.ticket_regex()
    # SECURITY: the pattern runs on a bounded prefix; with the save-time checks of
    # `ticket_pattern_problem` no pattern can stall the event loop.
    if pattern is not None and not pattern.search(text[:MAX_TICKET_SCAN]):
        raise AccessInvalid(
            "ticket_required",
            f"justification: must name a ticket matching {settings.ticket_pattern} "
            f"within its first {MAX_TICKET_SCAN} characters",
        )
    return text


class AccessStore:
    """Requests and grants in Redis; one instance per Redis client."""

    def __init__(self, redis: aioredis.Redis, clock: Clock) -> None:
        self.redis = redis
        self.clock = clock
        self._scripts = TransitionScripts(redis)
        self._grants = GrantReader(redis)

    # --- state changes --------------------------------------------------------------
    async def file(
        self,
        requester: Principal,
        *,
        org: object,
        member: object,
        justification: object,
        duration_s: object,
        scope: object,
    ) -> AccessRequest:
        """A staff member asks to act as `member` of `org`; validated before anything is stored."""
        if requester.kind is not PrincipalKind.STAFF:
            raise AccessForbidden("staff_only", "only vendor staff file access requests")
        org_id = check_id(org, "org")
        member_id = check_id(member, "member")
        await self._guard(self._require_org(org_id))
        settings = await self._guard(load_settings(self.redis, org_id))
        target = await self._guard(directory.member(self.redis, org_id, member_id))
        _check_target(target, org_id, member_id, settings)
        text = check_justification(justification, settings)
        duration = check_duration(duration_s, settings.max_duration_s)
        scope_value = check_scope(scope)
        now = self.clock.now()
        fields = _new_fields(
            requester, RequestKind.REQUEST, org_id, member_id, text, duration, scope_value,
            approvals_required=settings.approvals_required,
            created_at=now, lapses_at=now + settings.pending_lapse_s,
        )  # fmt: skip
        return await self._create(fields, requester, org_id, now)

    async def impersonate(
        self, admin: Principal, *, member: object, duration_s: object, scope: object = "write"
    ) -> AccessRequest:
        """A customer admin acts as a member of their own org: no approval, time-limited."""
        # SECURITY: only an admin of the org, only members of that same org.
        if admin.kind is not PrincipalKind.MEMBER or admin.role != "admin" or not admin.org:
            raise AccessForbidden("not_admin", "only a customer admin impersonates members")
        org_id = admin.org
        member_id = check_id(member, "member")
        if member_id == admin.id:
            raise AccessInvalid("invalid_member", "an admin does not impersonate themselves")
        settings = await self._guard(load_settings(self.redis, org_id))
        acting = await self._guard(directory.member(self.redis, org_id, admin.id))
        if acting is None or acting.disabled or acting.role != "admin":
            raise AccessForbidden("not_admin", "only a customer admin impersonates members")
        target = await self._guard(directory.member(self.redis, org_id, member_id))
        _check_target(target, org_id, member_id, settings)
        duration = check_duration(duration_s, settings.max_duration_s)
        scope_value = check_scope(scope)
        now = self.clock.now()
        fields = _new_fields(
            admin, RequestKind.IMPERSONATION, org_id, member_id, "customer admin impersonation",
            duration, scope_value, approvals_required=0, created_at=now, lapses_at=now,
        )  # fmt: skip
        return await self._create(fields, admin, org_id, now)

    async def approve(
        self,
        request_id: object,
        approver: Principal,
        *,
        comment: object = None,
        duration_s: object = None,
        scope: object = None,
    ) -> AccessRequest:
        rid = check_id(request_id, "request")
        note = check_comment(comment)
        duration = "" if duration_s is None else str(check_duration(duration_s, 30 * 86400))
        narrowed = "" if scope is None else check_scope(scope).value
        org = approver.org or "-"
        template = keys.member(org, "{id}")
        # SECURITY: the org's rules in force now bind the approval, not those at filing: an
        # org that since asks for more approvals or allows shorter grants gets its way.
        # Unreadable settings refuse the approval (AccessInvalid).
        request_org, _ = await self._anchor(rid)
        settings = await self._guard(load_settings(self.redis, request_org))
        await self._decide(
            "approve", rid, approver, note, duration, narrowed, template,
            str(settings.approvals_required), str(settings.max_duration_s),
        )  # fmt: skip
        return await self.require(rid)

    async def deny(
        self, request_id: object, approver: Principal, *, comment: object
    ) -> AccessRequest:
        rid = check_id(request_id, "request")
        note = check_comment(comment)
        await self._decide("deny", rid, approver, note)
        return await self.require(rid)

    async def cancel(
        self, request_id: object, requester: Principal, *, comment: object = None
    ) -> AccessRequest:
        rid = check_id(request_id, "request")
        note = check_comment(comment)
        org, requester_key = await self._anchor(rid)
        keys_ = self._keys(rid, org, requester_key, None)
        await self._run(self._scripts.cancel, keys_, [requester.key, note])
        return await self.require(rid)

    async def revoke(
        self, request_id: object, by: Principal, *, comment: object = None
    ) -> AccessRequest:
        rid = check_id(request_id, "request")
        note = check_comment(comment)
        org, requester_key = await self._anchor(rid)
        keys_ = self._keys(rid, org, requester_key, by.id if by.org == org else None)
        await self._run(self._scripts.revoke, keys_, [by.id, by.key, by.org or "", note])
        return await self.require(rid)

    async def revoke_all(
        self, org: object, admin: Principal, *, comment: object = None
    ) -> list[str]:
        """End every live grant of the admin's org in one atomic step; returns their ids."""
        org_id = check_id(org, "org")
        note = check_comment(comment)
        if admin.kind is not PrincipalKind.MEMBER or admin.org != org_id:
            raise AccessNotFound("not_found", f"no org {org_id!r}")
        keys_ = self._keys("-", org_id, admin.key, admin.id)
        args = [
            admin.id,
            admin.key,
            note,
            keys.access_request("{id}"),
            keys.request_history("{id}"),
            keys.live_grant("{actor}", "{org}"),
        ]
        reply = await self._run(self._scripts.revoke_all, keys_, args)
        revoked = reply.get("revoked") or []
        return sorted(str(i) for i in revoked) if isinstance(revoked, list) else []

    async def sweep(self, request_id: str) -> str:
        """Make the time-driven transition of one request if its time is up; returns its state."""
        try:
            org, requester_key = await self._anchor(request_id)
        except AccessNotFound:
            # An index naming a record that is gone: drop the entry (sweep.lua does the
            # same inside its script) rather than fail on it every round.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.pending_requests(), request_id)
                pipe.zrem(keys.live_grants(), request_id)
                await self._guard(pipe.execute())
            return "gone"
        keys_ = self._keys(request_id, org, requester_key, None)
        reply = await self._run(self._scripts.sweep, keys_, [request_id])
        return str(reply["state"])

    # --- reads ----------------------------------------------------------------------
    async def get(self, request_id: str) -> AccessRequest | None:
        async def read() -> AccessRequest | None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.access_request(request_id))
                pipe.smembers(keys.request_approvals(request_id))
                raw, approvals = await pipe.execute()
            return AccessRequest.from_stored(raw, approvals) if raw else None

        return await self._guard(read())

    async def require(self, request_id: str) -> AccessRequest:
        found = await self.get(request_id)
        if found is None:
            raise AccessNotFound("not_found", f"no request {request_id!r}")
        return found

    async def history(self, request_id: str) -> list[HistoryEntry]:
        raw = await self._guard(self.redis.lrange(keys.request_history(request_id), 0, -1))
        return [HistoryEntry.from_stored(item) for item in raw]

    async def search(
        self,
        *,
        org: str | None = None,
        requester: Principal | None = None,
        state: RequestState | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AccessRequest]:
        """Requests of one org or one staff member, newest first, filed within [since, until]."""
        if org is not None:
            index = keys.org_requests(org)
        elif requester is not None and requester.kind is PrincipalKind.STAFF:
            index = keys.staff_requests(requester.id)
        else:
            raise AccessInvalid("invalid_query", "list requests of an org or of a staff member")
        low = "-inf" if since is None else repr(since)
        high = "+inf" if until is None else repr(until)
        ids = await self._guard(
            self.redis.zrevrangebyscore(index, high, low, start=0, num=MAX_LIST)
        )
        out: list[AccessRequest] = []
        for raw_id in ids:
            found = await self.get(as_text(raw_id))
            if found is None:
                continue
            if requester is not None and found.requester.key != requester.key:
                continue
            if state is not None and found.state is not state:
                continue
            out.append(found)
            if len(out) >= limit:
                break
        return out

    async def check_grant(self, actor_key: str, org: str) -> GrantCheck:
        """The live grant of `actor_key` in `org`, judged by the Clock now (fails closed)."""
        facts = await self._guard(self._grants.read(actor_key, org))
        return grant_check_from(facts, self.clock.now())

    async def due(self) -> tuple[list[str], list[str]]:
        """Ids of pending requests whose time is up and of grants whose duration is over."""
        now = repr(self.clock.now())
        pending = await self._guard(self.redis.zrangebyscore(keys.pending_requests(), "-inf", now))
        ended = await self._guard(self.redis.zrangebyscore(keys.live_grants(), "-inf", now))
        return [as_text(i) for i in pending], [as_text(i) for i in ended]

    # --- plumbing -------------------------------------------------------------------
    async def _create(
        self, fields: dict[str, str], actor: Principal, org: str, now: float
    ) -> AccessRequest:
        rid = fields["id"]
        keys_ = self._keys(rid, org, actor.key, None)
        if actor.kind is not PrincipalKind.STAFF:
            keys_[11] = keys.org_requests(org)  # only staff have a personal index
        await self._run(self._scripts.file, keys_, [json.dumps(fields), _stamp(now)])
        return await self.require(rid)

    async def _decide(
        self, name: str, rid: str, approver: Principal, comment: str, *extra: str
    ) -> None:
        org, requester_key = await self._anchor(rid)
        if approver.kind is not PrincipalKind.MEMBER:
            # Staff never decide; their own request says so, anyone else's does not exist.
            if approver.key == requester_key:
                raise AccessForbidden("self_approval", "nobody decides their own request")
            raise AccessNotFound("not_found", f"no request {rid!r}")
        if directory.account_key(requester_key) is None:
            # SECURITY: without the requester's account nobody can tell whether the approver
            # is the same person; a damaged request is decided by nobody.
            raise AccessConflict("damaged_request", f"request {rid!r} names no readable requester")
        member_key = approver.id if approver.org == org else None
        keys_ = self._keys(rid, org, requester_key, member_key)
        args = [approver.id, approver.key, approver.org or "", comment, *extra]
        await self._run(self._scripts.by_name(name), keys_, args)

    async def _anchor(self, rid: str) -> tuple[str, str]:
        """The immutable (org, requester key) of a request: they name the other keys."""
        values = await self._guard(
            self.redis.hmget(keys.access_request(rid), ["org", "requester_key"])
        )
        if values[0] is None or values[1] is None:
            raise AccessNotFound("not_found", f"no request {rid!r}")
        return as_text(values[0]), as_text(values[1])

    def _keys(self, rid: str, org: str, requester_key: str, approver_id: str | None) -> list[str]:
        staff_id = requester_key.split(":", 1)[1] if requester_key.startswith("staff:") else None
        return [
            keys.access_request(rid),
            keys.request_history(rid),
            keys.request_approvals(rid),
            keys.org_approvers(org),
            # A principal of another org gets a member key that cannot exist: never an approver.
            keys.member(org, approver_id) if approver_id else keys.member(org, "-"),
            keys.pending_requests(),
            keys.live_grants(),
            keys.live_grant(requester_key, org),
            keys.org_live_grants(org),
            keys.access_outbox(),
            keys.org_requests(org),
            keys.staff_requests(staff_id) if staff_id else keys.org_requests(org),
            # The requester's account: its person link is read when a request is decided.
            directory.account_key(requester_key) or keys.staff("-"),
        ]

    async def _run(
        self, script: AsyncScript, keys_: list[str], args: Sequence[str]
    ) -> dict[str, Any]:
        now = _stamp(self.clock.now())
        channel = keys.grant_events_channel()
        raw = await self._guard(script(keys=keys_, args=[channel, now, *args]))
        reply: dict[str, Any] = json.loads(raw)
        if not reply.get("ok"):
            code = str(reply.get("error", "refused"))
            raise _REFUSALS.get(code, AccessConflict)(code, str(reply.get("reason", code)))
        return reply

    async def _require_org(self, org: str) -> None:
        if not await directory.org_exists(self.redis, org):
            raise AccessInvalid("unknown_org", f"no org {org!r}")

    @staticmethod
    async def _guard(work: Awaitable[_T]) -> _T:
        # SECURITY: Redis down means nothing changed and nothing is granted (fail closed).
        try:
            return await work
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise AccessUnavailable(
                "unavailable", f"the grant store is unreachable: {exc}"
            ) from exc


def grant_check_from(facts: GrantFacts, now: float) -> GrantCheck:
    """Judge a live-grant pointer hash at `now`: the one rule every check applies.

    `facts.member` is the account hash of the member the grant acts as: a member disabled,
    marked not impersonable, gone, or made an admin (where the org does not let admins be
    acted as) since the approval is refused from then on, at every check (the grant itself
    stays as it is; its approvers may still revoke it).
    """
    return parse_grant(facts).at(now)


_NO_GRANT = GrantCheck(None, "no_grant", "no approved access to this org")
_REVOKED = GrantCheck(None, "grant_revoked", "the access to this org was revoked")
_EXPIRED = GrantCheck(None, "grant_expired", "the access to this org has expired")


@dataclass(frozen=True)
class ParsedGrant:
    """`GrantFacts` parsed once; `at(now)` applies the rules that depend on the time.

    What does not depend on the time is settled when the facts are parsed (`settled`:
    revoked or unreadable, judged before the times; `granted`: the verdict once the times
    pass, i.e. the grant or the member's refusal). The grant watcher caches this object in
    place of the facts it came from, so a cached check does not parse again, while every
    check still judges the grant's start and end against the Clock (`at`).
    """

    settled: GrantCheck | None
    granted: GrantCheck
    state: str = ""
    starts_at: float = 0.0
    expires_at: float = 0.0

    def at(self, now: float) -> GrantCheck:
        if self.settled is not None:
            return self.settled
        # SECURITY: the times are judged by the Clock now, on every check, cached or not.
        if self.state == RequestState.EXPIRED or now >= self.expires_at:
            return _EXPIRED
        if self.state != RequestState.APPROVED or now < self.starts_at:
            return _NO_GRANT
        return self.granted


def parse_grant(facts: GrantFacts) -> ParsedGrant:
    """Parse a live-grant pointer and its member once (see `ParsedGrant`)."""
    raw, member = facts.pointer, facts.member
    if not raw:
        return ParsedGrant(_NO_GRANT, _NO_GRANT)
    f = {as_text(k): as_text(v) for k, v in raw.items()}
    state = f.get("state", "")
    if state == RequestState.REVOKED:
        return ParsedGrant(_REVOKED, _REVOKED)
    try:
        starts = float(f["starts_at"])
        expires = float(f["expires_at"])
        grant = ActingGrant(
            grant_id=f["id"],
            org=f["org"],
            member_id=f["member"],
            actor=Principal(
                kind=PrincipalKind(f["actor_kind"]),
                id=f["actor_id"],
                email=f.get("actor_email", ""),
                name=f.get("actor_name", ""),
                org=f.get("actor_org") or None,
                role=f.get("actor_role") or None,
            ),
            scope=Scope(f["scope"]),
            starts_at=starts,
            expires_at=expires,
        )
    except (KeyError, ValueError):
        # SECURITY: a pointer we cannot read grants nothing.
        return ParsedGrant(_NO_GRANT, _NO_GRANT)
    if not (math.isfinite(starts) and math.isfinite(expires)):
        # SECURITY: NaN compares false both ways and would pass every time check.
        return ParsedGrant(_NO_GRANT, _NO_GRANT)
    # SECURITY: the approval was for a member who could be impersonated then; a member
    # disabled or marked not impersonable since is never acted as again.
    actor = facts.actor
    if grant.actor.kind is PrincipalKind.MEMBER and (
        actor.get("role") != "admin" or actor.get("disabled") == "1"
    ):
        # SECURITY: a customer admin acts as their org's members only while still an
        # enabled admin of that org; demoted, disabled or gone, the impersonation ends.
        granted = GrantCheck(
            None,
            "not_admin",
            f"{grant.actor.id} is no longer an admin of {grant.org}; the impersonation ended",
        )
    elif not member or member.get("disabled") == "1" or member.get("impersonable", "1") != "1":
        granted = GrantCheck(
            None,
            "member_not_impersonable",
            f"{grant.member_id} may no longer be impersonated (disabled or marked so)",
        )
    elif member.get("role") == "admin" and not facts.admins_impersonable:
        granted = GrantCheck(
            None,
            "member_not_impersonable",
            f"{grant.member_id} is an admin now, and this org does not allow acting as admins",
        )
    else:
        granted = GrantCheck(grant, None, "granted")
    return ParsedGrant(None, granted, state, starts, expires)


def _check_target(
    target: directory.Member | None, org: str, member_id: str, settings: OrgSettings
) -> None:
    if target is None or target.disabled:
        raise AccessInvalid("unknown_member", f"no member {member_id!r} in {org}")
    # SECURITY: never impersonate a member marked not impersonable, nor an admin unless allowed.
    if not target.impersonable:
        raise AccessInvalid("member_not_impersonable", f"{member_id} may not be impersonated")
    if target.role == "admin" and not settings.admins_impersonable:
        raise AccessInvalid("admin_not_impersonable", f"{org} does not allow acting as an admin")


def _stamp(when: float) -> str:
    return f"{when:.3f}"


def _new_fields(
    requester: Principal,
    kind: RequestKind,
    org: str,
    member: str,
    justification: str,
    duration: int,
    scope: Scope,
    *,
    approvals_required: int,
    created_at: float,
    lapses_at: float,
) -> dict[str, str]:
    return {
        "id": secrets.token_hex(10),
        "kind": kind.value,
        "org": org,
        "member": member,
        "requester_key": requester.key,
        "requester_kind": requester.kind.value,
        "requester_id": requester.id,
        "requester_email": requester.email,
        "requester_name": requester.name,
        "requester_org": requester.org or "",
        "requester_role": requester.role or "",
        "justification": justification,
        "requested_duration_s": str(duration),
        "requested_scope": scope.value,
        "duration_s": str(duration),
        "scope": scope.value,
        "approvals_required": str(approvals_required),
        "state": RequestState.PENDING.value,
        "created_at": _stamp(created_at),
        "lapses_at": _stamp(lapses_at),
    }
