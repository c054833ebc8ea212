"""Heartbeats on the grant-event channel: proof that a subscription hears this instance's writes.

A subscription that answers pings may still sit on a server the writes no longer reach (an
old master after a Sentinel failover across a partition): it would hear no revocation while
the cache trusted it. So each gateway instance publishes, through the client it writes with,
a heartbeat naming a random token of its own and a counter, and trusts its subscription only
while it hears its own heartbeats back in time. Other instances' heartbeats mean nothing to
it and are ignored.

    beats = Heartbeats(token, now)          # waiting from `now` for the first answer
    message = beats.next_message(now)       # publish it on the grant channel
    beat = heartbeat_of(data)               # a received message: (token, counter) or None
    if beat and beat[0] == token: beats.heard(beat[1])
    beats.overdue(now, within_s)            # an answer is late: events may be missed
"""

from __future__ import annotations

import json
from collections import deque

HEARTBEAT = "heartbeat"


def heartbeat_of(data: bytes | str) -> tuple[str, int] | None:
    """(token, counter) when `data` is a heartbeat, else None (an event, or unreadable)."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(message, dict) or message.get("event") != HEARTBEAT:
        return None
    token, counter = message.get("from"), message.get("n")
    if not isinstance(token, str) or isinstance(counter, bool) or not isinstance(counter, int):
        return None
    return token, counter


class Heartbeats:
    """One subscription's heartbeats: those sent and not yet heard back, with their times."""

    def __init__(self, token: str, now: float) -> None:
        self.token = token
        self._counter = 0
        self._unanswered: deque[tuple[int, float]] = deque()
        # Since when an answer has been awaited: a new subscription proves nothing until
        # its first heartbeat comes back, so the wait starts with it.
        self._waiting_since: float | None = now

    def next_message(self, now: float) -> str:
        """The next heartbeat to publish (counted as sent at `now`)."""
        self._counter += 1
        self._unanswered.append((self._counter, now))
        if self._waiting_since is None:
            self._waiting_since = now
        return json.dumps({"event": HEARTBEAT, "from": self.token, "n": self._counter})

    def heard(self, counter: int) -> bool:
        """Our heartbeat `counter` came back; False if it is none we are waiting for."""
        if not any(sent == counter for sent, _ in self._unanswered):
            return False  # a replay or a stale beat proves nothing about now
        # Delivery is in order: every earlier heartbeat is answered (or lost) by now.
        while self._unanswered and self._unanswered[0][0] <= counter:
            self._unanswered.popleft()
        self._waiting_since = self._unanswered[0][1] if self._unanswered else None
        return True

    def overdue(self, now: float, within_s: float) -> bool:
        """An answer awaited for longer than `within_s`."""
        return self._waiting_since is not None and now - self._waiting_since > within_s
