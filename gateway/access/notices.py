"""Notices: every workflow event in the outbox becomes audit records and queued mail.

The transition scripts append each event to the outbox stream in the same atomic step as
the change, so no change can lose its notice. `Notices.process_once` reads the stream as
a consumer group: an event is acknowledged only after its audit record was accepted and
its mail queued; if either fails the event stays pending, the failure is logged (and
counted) and the next round tries again. Nothing is dropped silently.

Who hears what:
- filed: every approver in force (requester, member, justification, duration, scope, and
  a link to the console page; the link alone approves nothing);
- approval that is not yet the final one (N-of-M): every approver in force who has not
  approved yet ("1 of 2 approvals given by alice"), while the request is still pending;
- approved, denied, lapsed, expired, revoked: the requester;
- expired, revoked: the approvers too, with a summary of the grant's use.
Customer admins' own impersonations are audited, not mailed.

Consumers: each gateway process reads as its own randomly named consumer of the group.
A stopping instance removes its consumer (`leave`) when it holds no pending event, and
every instance, once every PRUNE_EVERY_S, removes consumers idle for `prune_idle_ms` that
hold none (`prune`: dead instances' names, whose events the others have claimed), so that
the group does not grow with every restart. The check and the removal are one Lua script:
XGROUP DELCONSUMER drops a consumer's pending entries with it, so a consumer that holds a
pending event is never removed (it is claimed after STALE_MS and handled instead).

"Every approver" never includes an account linked to the requester as one person (the
directory's `person`): nobody is asked to decide their own request. A partial-approval
mail skips every account of each person who approved already.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import Counter

from audit.record import Person, event_record
from gateway import keys
from gateway.access import directory
from gateway.access.mail import MailQueue
from gateway.access.model import AccessRequest, RequestKind, RequestState
from gateway.access.store import AccessStore
from gateway.access.text import as_text

log = logging.getLogger(__name__)

GROUP = "notices"
STALE_MS = 60_000  # an event another consumer held this long without acknowledging is retaken
# A live instance reads at least every second; a consumer idle this long is a dead one's.
PRUNE_IDLE_MS = 3_600_000
PRUNE_EVERY_S = 300.0
LEAVE_WITHIN_S = 1.0  # a stopping instance does not wait longer than this on Redis
# Remove each named consumer of the group (KEYS[1] the stream, ARGV[1] the group, ARGV[2]
# the minimum idle ms, then names) that holds no pending entry and is idle at least that
# long; the names removed. Checked and removed in one step, so that no entry delivered
# meanwhile is dropped with its consumer.
PRUNE_SCRIPT = """
local wanted = {}
for i = 3, #ARGV do wanted[ARGV[i]] = true end
local removed = {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  local name = fields['name']
  if wanted[name] and fields['pending'] == 0 and fields['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed[#removed + 1] = name
  end
end
return removed
"""

NOTICE_FAILURES = Counter(
    "gateway_access_notice_failures_total",
    "Workflow events whose audit record or mail could not be written yet (retried)",
)

AuditAppend = Callable[[Mapping[str, Any]], Awaitable[int]]


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _review(request: AccessRequest, link: str) -> str:
    """The approvers' closing lines: when the request lapses and where to decide it."""
    return (
        f"Undecided requests lapse at {_when(request.lapses_at)}.\n\n"
        f"Review it in the console (sign-in required; this link alone approves "
        f"nothing):\n{link}\n"
    )


def _person(principal_key: str) -> Person:
    parts = principal_key.split(":")
    if parts[0] == "staff" and len(parts) == 2:
        return Person(id=parts[1], kind="staff")
    if parts[0] == "member" and len(parts) == 3:
        return Person(id=parts[2], kind="member", org=parts[1])
    return Person(id=principal_key, kind="gateway")


class Notices:
    def __init__(
        self,
        redis: aioredis.Redis,
        store: AccessStore,
        mail: MailQueue,
        *,
        console_url: str,
        audit: AuditAppend | None,
        consumer: str | None = None,
        prune_idle_ms: int = PRUNE_IDLE_MS,
    ) -> None:
        self.redis = redis
        self.store = store
        self.mail = mail
        self.console_url = console_url.rstrip("/")
        self.audit = audit
        self.consumer = consumer or f"notices-{secrets.token_hex(4)}"
        self.prune_idle_ms = prune_idle_ms
        self._prune_script = redis.register_script(PRUNE_SCRIPT)
        self._pruned_at: float | None = None  # monotonic time of the last prune
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(keys.access_outbox(), GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def prune(self, idle_ms: int | None = None) -> list[str]:
        """Remove the group's other consumers idle at least `idle_ms` (default
        `prune_idle_ms`) that hold no pending event; the names removed."""
        await self._ensure_group()
        outbox = keys.access_outbox()
        infos: Any = await self.redis.xinfo_consumers(outbox, GROUP)
        names = [as_text(info["name"]) for info in infos]
        others = [name for name in names if name != self.consumer]
        if not others:
            return []
        limit = self.prune_idle_ms if idle_ms is None else idle_ms
        removed: Any = await self._prune_script(keys=[outbox], args=[GROUP, limit, *others])
        gone = [as_text(name) for name in removed]
        if gone:
            log.info("removed %d idle notices consumer(s) without pending events", len(gone))
        return gone

    async def leave(self, within_s: float = LEAVE_WITHIN_S) -> bool:
        """Remove this instance's consumer if it holds no pending event (call it once the
        loop has stopped); whether it was removed. Never raises: a consumer left behind is
        pruned later, and its pending events are claimed by the other instances."""
        try:
            async with asyncio.timeout(within_s):
                removed: Any = await self._prune_script(
                    keys=[keys.access_outbox()], args=[GROUP, 0, self.consumer]
                )
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):
                return False  # no group, so no consumer either
            log.warning("notices consumer %s not removed at stop: %s", self.consumer, exc)
            return False
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("notices consumer %s not removed at stop: %r", self.consumer, exc)
            return False
        if not removed:
            log.info("notices consumer %s kept: it holds pending events", self.consumer)
        return bool(removed)

    async def _prune_now_and_then(self) -> None:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            await self.prune()
        except redis.exceptions.RedisError as exc:
            # Housekeeping only: the events are still handled; the next prune retries.
            log.warning("pruning idle notices consumers failed: %s", exc)

    async def process_once(self, count: int = 100, block_ms: int | None = None) -> int:
        """Handle waiting events: this consumer's unacknowledged ones, stale ones of others,
        then new ones. Returns how many were handled completely."""
        await self._ensure_group()
        await self._prune_now_and_then()
        outbox = keys.access_outbox()
        entries: list[tuple[Any, dict[Any, Any]]] = []
        mine: Any = await self.redis.xreadgroup(GROUP, self.consumer, {outbox: "0"}, count=count)
        for _, items in mine or []:
            entries.extend(item for item in items if item[1])
        stale = await self.redis.xpending_range(
            outbox, GROUP, min="-", max="+", count=count, idle=STALE_MS
        )
        if stale:
            claimed: Any = await self.redis.xclaim(
                outbox, GROUP, self.consumer, STALE_MS, [s["message_id"] for s in stale]
            )
            entries.extend(item for item in claimed if item[1])
        # New events are read every round, so one event that keeps failing never holds
        # back the others; the wait for new ones happens only when nothing is pending.
        fresh: Any = await self.redis.xreadgroup(
            GROUP, self.consumer, {outbox: ">"}, count=count,
            block=None if entries else block_ms,
        )  # fmt: skip
        for _, items in fresh or []:
            entries.extend(items)
        handled = 0
        for entry_id, fields in entries:
            event = {as_text(k): as_text(v) for k, v in fields.items()}
            try:
                await self.handle(event)
            except Exception:
                NOTICE_FAILURES.inc()
                log.exception(
                    "workflow event %s of request %s not yet recorded; will retry",
                    event.get("event"),
                    event.get("id"),
                )
                continue
            await self.redis.xack(outbox, GROUP, entry_id)
            await self.redis.xdel(outbox, entry_id)
            handled += 1
        return handled

    async def handle(self, event: Mapping[str, str]) -> None:
        request = await self.store.get(event["id"])
        if request is None:
            return
        await self._record(event, request)
        if event["event"] == "approval":
            await self._partial_approval(event, request)
            return
        await self._mail(event["event"], request, event.get("comment", ""))

    async def _record(self, event: Mapping[str, str], request: AccessRequest) -> None:
        if self.audit is None:
            return
        body = event_record(
            f"access.{event['event']}",
            at=float(event["at"]),
            category="workflow",
            actor=_person(event["actor"]),
            effective=Person(id=request.member, kind="member", org=request.org),
            org=request.org,
            grant_id=request.id,
            reason=event.get("comment") or None,
            details={
                "kind": request.kind.value,
                "state": request.state.value,
                "requester": request.requester.key,
                "duration_s": request.duration_s,
                "scope": request.scope.value,
                "justification": request.justification,
            },
        )
        await self.audit(body)

    async def _mail(self, event: str, request: AccessRequest, comment: str) -> None:
        if request.kind is RequestKind.IMPERSONATION:
            return
        link = f"{self.console_url}/requests/{request.id}"
        who = f"{request.requester.name or request.requester.id} <{request.requester.email}>"
        facts = (
            f"Requester:     {who}\n"
            f"Organisation:  {request.org}\n"
            f"Act as member: {request.member}\n"
            f"Scope:         {request.scope.value}\n"
            f"Duration:      {request.duration_s} s\n"
            f"Justification: {request.justification}\n"
        )
        if event == "filed":
            body = (
                f"{who} asks to act as {request.member} in {request.org}.\n\n{facts}"
                f"{_review(request, link)}"
            )
            subject = f"Access request: {request.requester.id} -> {request.org}/{request.member}"
            await self._mail_approvers(request, subject, body)
            return
        if event in ("approved", "denied", "lapsed", "expired", "revoked"):
            said = f"\nComment: {comment}\n" if comment else ""
            timing = ""
            if event == "approved":
                timing = f"Access from {_when(request.starts_at)} to {_when(request.expires_at)}.\n"
            body = (
                f"Your access request {request.id} is {event}.\n{timing}{said}\n{facts}\n{link}\n"
            )
            subject = f"Access request {event}: {request.org}/{request.member}"
            if request.requester.email:
                await self.mail.enqueue(request.requester.email, subject, body)
        if event in ("expired", "revoked"):
            await self._summary(event, request, facts, link)

    async def _partial_approval(self, event: Mapping[str, str], request: AccessRequest) -> None:
        """An approval short of the number required: tell the approvers still to decide."""
        try:
            given, required = int(event.get("approvals", "")), int(event.get("required", ""))
        except ValueError:
            return  # an event from before counts were recorded: nothing to say
        if request.kind is RequestKind.IMPERSONATION or given >= required:
            return  # the final approval: the "approved" event tells everyone
        if request.state is not RequestState.PENDING:
            return  # decided since: that decision's own notice is the one that matters
        by = _person(event.get("actor", ""))
        approver = await directory.member(self.redis, request.org, by.id)
        name = approver.name if approver and approver.name else by.id
        link = f"{self.console_url}/requests/{request.id}"
        subject = (
            f"Access request: {given} of {required} approvals "
            f"({request.requester.id} -> {request.org}/{request.member})"
        )
        said = f"Comment: {event['comment']}\n" if event.get("comment") else ""
        body = (
            f"{given} of {required} approvals given by {name} for the request of "
            f"{request.requester.id} to act as {request.member} in {request.org}.\n{said}\n"
            f"Scope now:     {request.scope.value}\n"
            f"Duration now:  {request.duration_s} s\n"
            f"Justification: {request.justification}\n"
            f"{_review(request, link)}"
        )
        await self._mail_approvers(request, subject, body, skip=request.approvals)

    async def _summary(self, event: str, request: AccessRequest, facts: str, link: str) -> None:
        used = await self.redis.hget(keys.access_request(request.id), "requests")
        history = await self.store.history(request.id)
        body = (
            f"The access of {request.requester.id} to {request.org} as {request.member} "
            f"has ended ({event}).\n\n{facts}"
            f"Started: {_when(request.starts_at)}\nEnded:   {_when(request.ended_at)}\n"
            f"Ended by: {request.ended_by}\n"
            f"Requests made through the gateway: {int(as_text(used)) if used else 0}\n"
            f"Workflow steps recorded: {len(history)}\n\n{link}\n"
        )
        subject = f"Access ended ({event}): {request.requester.id} in {request.org}"
        await self._mail_approvers(request, subject, body)

    async def _mail_approvers(
        self, request: AccessRequest, subject: str, body: str, *, skip: Collection[str] = ()
    ) -> None:
        """Queue the mail for every approver of the request's org with an address, but the
        requester's own accounts and every account of the people who approved (`skip`)."""
        everyone = await directory.approvers(self.redis, request.org)
        requester = await directory.person_of(self.redis, request.requester.key)
        done = {approver.who for approver in everyone if approver.id in skip}
        for approver in everyone:
            if approver.who == requester or approver.who in done or approver.id in skip:
                continue
            if approver.email:
                await self.mail.enqueue(approver.email, subject, body)
