"""The mail queue: notices wait in Redis until an SMTP server accepted them.

A message is one hash (`keys.mail_message(id)`); `keys.mail_queue()` orders the waiting ones
by when they are next due; `keys.mail_undelivered()` holds those given up on after
MAX_ATTEMPTS, kept for operators (`gateway mail list`, `gateway mail retry ID`). A sender
claims due messages for a lease so that two gateway instances never send the same one at
the same time; a failure pushes it back with exponential backoff. Enqueueing never talks to
SMTP, so a mail outage never blocks or loses a request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.text import as_text
from gateway.clock import Clock

MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 3600.0
LEASE_S = 120.0
MAX_SUBJECT = 200
MAX_BODY = 64 * 1024

# Take up to ARGV[3] messages due at ARGV[1] and push them ARGV[2] seconds ahead (the lease).
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


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
        now = self.clock.now()
        ids = await self._claim(
            keys=[keys.mail_queue()], args=[repr(now), repr(now + LEASE_S), str(limit)]
        )
        found = [await self.get(as_text(i)) for i in ids]
        return [m for m in found if m is not None]

    async def delivered(self, message_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.mail_queue(), message_id)
            pipe.delete(keys.mail_message(message_id))
            await pipe.execute()

    async def failed(self, message: MailMessage, error: str) -> None:
        attempts = message.attempts + 1
        now = self.clock.now()
        key = keys.mail_message(message.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"attempts": str(attempts), "last_error": error[:500]})
            if attempts >= MAX_ATTEMPTS:
                pipe.zrem(keys.mail_queue(), message.id)
                pipe.zadd(keys.mail_undelivered(), {message.id: now})
                pipe.hset(key, "next_at", "")
            else:
                due = now + backoff(attempts)
                pipe.zadd(keys.mail_queue(), {message.id: due})
                pipe.hset(key, "next_at", repr(due))
            await pipe.execute()

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
        raw = await self.redis.hgetall(keys.mail_message(message_id))
        if not raw:
            return None
        f = {as_text(k): as_text(v) for k, v in raw.items()}
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
