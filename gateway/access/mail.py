"""The mail queue: notices wait in Redis until an SMTP server accepted them.

A message is one hash (`keys.mail_message(id)`); `keys.mail_queue()` orders the waiting ones
by when they are next due; `keys.mail_undelivered()` holds those given up on after
MAX_ATTEMPTS, kept for operators (`gateway mail list`, `gateway mail retry ID`). A sender
claims due messages for a lease (their queue score becomes the lease's end) so that two
gateway instances never send the same one at the same time; a failure pushes it back with
exponential backoff. Enqueueing never talks to SMTP, so a mail outage never blocks or loses
a request.

A lease can run out while its sender is stuck (a slow SMTP server, a paused process) and
another instance then takes the message over. So the sender renews the lease of each
message just before sending it (`renew` gives None once the lease has run out or is
another's, and the message is left to its new holder), and `delivered` / `failed` change
a message only while the lease they name is still its own: a late answer never re-queues
or half-rewrites a message another instance delivered meanwhile. A queued id whose record
is gone or lacks its fields is dropped from the queue at the next claim, never handed to
a sender.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.text import as_text
from gateway.clock import Clock

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 3600.0
LEASE_S = 120.0
MAX_SUBJECT = 200
MAX_BODY = 64 * 1024

# Take up to ARGV[3] messages due at ARGV[1] and push them to ARGV[2] (the lease's end).
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""

# A lease is named by its end, the message's queue score while it is held: a later claim
# can only be made once that end has passed, and then sets a later one. KEYS[1]: the queue.
# ARGV[1]: the message id, ARGV[2]: the lease's end as claimed ('' for none: an operator's
# change, made while the message is queued or given up on).
_HELD = """
local function held(queue, id, lease)
  if lease == '' then return true end
  local score = redis.call('ZSCORE', queue, id)
  return score ~= false and tonumber(score) == tonumber(lease)
end
"""

# Extend the lease to ARGV[4] when it is still ours and has not ended at ARGV[3].
_RENEW = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1], ARGV[2]) or tonumber(ARGV[3]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""
)

# KEYS[2]: the message. Delivered: gone from the queue and from Redis.
_DELIVERED = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS[3]: the undelivered index. ARGV[3]: attempts, ARGV[4]: the error, ARGV[5]: when it
# is due again ('' when given up on), ARGV[6]: now.
_FAILED = (
    _HELD
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'attempts', ARGV[3], 'last_error', ARGV[4], 'next_at', ARGV[5])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
end
return 1
"""
)

_FIELDS = ("id", "to", "subject", "body", "created_at", "attempts")


@dataclass(frozen=True)
class MailMessage:
    id: str
    to: str
    subject: str
    body: str
    created_at: float
    attempts: int
    next_at: float
    last_error: str
    # The end of the lease a claim took it under (None: read, not claimed).
    lease: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "to": self.to,
            "subject": self.subject,
            "created_at": self.created_at,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "last_error": self.last_error,
        }


def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failure: 30 s, 60 s, 120 s, ... capped at 1 h."""
    return float(min(BACKOFF_BASE_S * (2 ** max(attempts - 1, 0)), BACKOFF_MAX_S))


class MailQueue:
    def __init__(self, redis: aioredis.Redis, clock: Clock) -> None:
        self.redis = redis
        self.clock = clock
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._delivered = redis.register_script(_DELIVERED)
        self._failed = redis.register_script(_FAILED)

    async def enqueue(self, to: str, subject: str, body: str) -> str:
        if "\n" in to or "\r" in to or "\n" in subject or "\r" in subject:
            # SECURITY: no header injection through an address or a subject.
            raise ValueError("mail address and subject must be single lines")
        message_id = secrets.token_hex(10)
        now = self.clock.now()
        fields: dict[Any, Any] = {
            "id": message_id,
            "to": to,
            "subject": subject[:MAX_SUBJECT],
            "body": body[:MAX_BODY],
            "created_at": repr(now),
            "attempts": "0",
            "next_at": repr(now),
            "last_error": "",
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.mail_message(message_id), mapping=fields)
            pipe.zadd(keys.mail_queue(), {message_id: now})
            await pipe.execute()
        return message_id

    async def claim(self, limit: int = 20) -> list[MailMessage]:
        """Due messages, each leased to the caller until now + LEASE_S."""
        now = self.clock.now()
        lease = now + LEASE_S
        ids = await self._claim(keys=[keys.mail_queue()], args=[repr(now), repr(lease), str(limit)])
        claimed: list[MailMessage] = []
        for raw in ids:
            message_id = as_text(raw)
            found = await self.get(message_id)
            if found is None:
                # Its record is gone or damaged: nothing to send, and left queued it would
                # be claimed again every lease.
                log.warning("mail %s has no readable record; dropped from the queue", message_id)
                await self._delivered(
                    keys=[keys.mail_queue(), keys.mail_message(message_id)],
                    args=[message_id, repr(lease)],
                )
                continue
            claimed.append(replace(found, lease=lease))
        return claimed

    async def renew(self, message: MailMessage) -> MailMessage | None:
        """`message` with its lease renewed from now, or None when the lease has run out or
        is another's (the message must then not be sent: its new holder sends it)."""
        if message.lease is None:
            raise ValueError(f"mail {message.id} was not claimed: there is no lease to renew")
        now = self.clock.now()
        lease = now + LEASE_S
        renewed = await self._renew(
            keys=[keys.mail_queue()],
            args=[message.id, repr(message.lease), repr(now), repr(lease)],
        )
        return replace(message, lease=lease) if renewed == 1 else None

    async def delivered(self, message: MailMessage) -> bool:
        """Remove a sent message; False when its lease was another's by then (nothing done)."""
        done = await self._delivered(
            keys=[keys.mail_queue(), keys.mail_message(message.id)],
            args=[message.id, _lease_arg(message)],
        )
        return bool(done == 1)

    async def failed(self, message: MailMessage, error: str) -> bool:
        """Count a failed attempt: due again after the backoff, or given up on after
        MAX_ATTEMPTS. False when the message is gone or its lease is another's."""
        attempts = message.attempts + 1
        now = self.clock.now()
        due = "" if attempts >= MAX_ATTEMPTS else repr(now + backoff(attempts))
        done = await self._failed(
            keys=[keys.mail_queue(), keys.mail_message(message.id), keys.mail_undelivered()],
            args=[message.id, _lease_arg(message), str(attempts), error[:500], due, repr(now)],
        )
        return bool(done == 1)

    async def retry(self, message_id: str) -> bool:
        """Put a given-up message back in the queue, due now; False if there is no such one."""
        if await self.redis.zrem(keys.mail_undelivered(), message_id) == 0:
            return False
        now = self.clock.now()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.mail_message(message_id), mapping={"attempts": "0", "next_at": repr(now)}
            )
            pipe.zadd(keys.mail_queue(), {message_id: now})
            await pipe.execute()
        return True

    async def get(self, message_id: str) -> MailMessage | None:
        """The message, or None when there is none or its record lacks its fields."""
        raw = await self.redis.hgetall(keys.mail_message(message_id))
        f = {as_text(k): as_text(v) for k, v in raw.items()}
        if any(name not in f for name in _FIELDS):
            return None
        try:
            return MailMessage(
                id=f["id"],
                to=f["to"],
                subject=f["subject"],
                body=f["body"],
                created_at=float(f["created_at"]),
                attempts=int(f["attempts"]),
                next_at=float(f["next_at"]) if f.get("next_at") else 0.0,
                last_error=f.get("last_error", ""),
            )
        except ValueError:
            return None

    async def waiting(self) -> list[MailMessage]:
        """Messages still to be sent, soonest first (attempts > 0 means it failed before)."""
        return await self._messages(keys.mail_queue())

    async def undelivered(self) -> list[MailMessage]:
        """Messages given up on after MAX_ATTEMPTS failures."""
        return await self._messages(keys.mail_undelivered())

    async def _messages(self, index: str) -> list[MailMessage]:
        ids = await self.redis.zrange(index, 0, -1)
        found = [await self.get(as_text(i)) for i in ids]
        return [m for m in found if m is not None]


def _lease_arg(message: MailMessage) -> str:
    return "" if message.lease is None else repr(message.lease)
