"""Heartbeats: which messages are heartbeats, and which answers prove a subscription healthy."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from gateway.access.events import member_changed
from gateway.access.heartbeat import Heartbeats, heartbeat_of
from gateway.access.store import GrantCheck, ParsedGrant
from gateway.access.watcher import GrantWatcher
from gateway.clock import ManualClock
from gateway.flow import InFlightFlows

WITHIN_S = 3.0


def test_a_sent_heartbeat_reads_back_as_its_token_and_counter() -> None:
    beats = Heartbeats("me", 0.0)
    first, second = beats.next_message(0.0), beats.next_message(1.0)
    assert heartbeat_of(first) == ("me", 1)
    assert heartbeat_of(second.encode()) == ("me", 2)


@pytest.mark.parametrize(
    "data",
    [
        member_changed("acme", "bob")[1],
        json.dumps({"event": "revoked", "id": "r-1", "actor_key": "staff:sam", "org": "acme"}),
        b"\xff\xfe not json",
        "",
        "[1, 2]",
        '"heartbeat"',
        json.dumps({"event": "heartbeat", "from": "me"}),
        json.dumps({"event": "heartbeat", "from": "me", "n": "1"}),
        json.dumps({"event": "heartbeat", "from": "me", "n": True}),
        json.dumps({"event": "heartbeat", "from": 7, "n": 1}),
        json.dumps({"event": "heartbeat", "from": "me", "n": 1.5}),
        "[" * 100_000,  # nested past the parser's depth
    ],
)
def test_anything_else_is_not_a_heartbeat(data: str | bytes) -> None:
    assert heartbeat_of(data) is None


def test_a_new_subscription_is_overdue_until_its_first_heartbeat_comes_back() -> None:
    beats = Heartbeats("me", 10.0)
    assert not beats.overdue(13.0, WITHIN_S)
    assert beats.overdue(13.1, WITHIN_S)  # nothing heard at all: not healthy
    beats.next_message(13.1)
    assert beats.heard(1)
    assert not beats.overdue(100.0, WITHIN_S)  # nothing awaited


def test_an_answer_late_past_the_bound_is_overdue_from_the_oldest_unanswered() -> None:
    beats = Heartbeats("me", 0.0)
    beats.next_message(0.0)
    assert beats.heard(1)
    beats.next_message(1.0)
    beats.next_message(2.0)
    beats.next_message(3.0)
    assert beats.overdue(4.1, WITHIN_S)  # the one sent at 1.0 is late
    assert beats.heard(3)  # in-order delivery: 2 and 3 are answered with it
    assert not beats.overdue(4.1, WITHIN_S)


def test_a_replayed_or_unknown_counter_proves_nothing() -> None:
    beats = Heartbeats("me", 0.0)
    beats.next_message(0.0)
    assert beats.heard(1)
    beats.next_message(1.0)
    assert not beats.heard(1)  # already answered: a replay
    assert not beats.heard(99)  # never sent
    assert not beats.heard(-1)
    assert beats.overdue(4.1, WITHIN_S)


async def test_the_watcher_takes_no_heartbeat_for_an_event_and_no_garbage_for_a_heartbeat(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    watcher = GrantWatcher(redis, clock, InFlightFlows())
    kept = ParsedGrant(None, GrantCheck(None, "no_grant", "none"))
    watcher._cache[("staff:sam", "acme")] = kept
    generation = watcher._generation
    beat = Heartbeats("someone-else", 0.0).next_message(0.0)
    assert watcher.on_event(beat) is False
    assert watcher._generation == generation  # a read racing it may still be cached
    assert watcher._cache == {("staff:sam", "acme"): kept}
    for garbage in ("[" * 100_000, b"\xff", '{"event": "heartbeat"'):
        assert watcher.on_event(garbage) is False
        assert watcher._cache == {}  # unreadable: nothing cached is trusted
        assert watcher._generation > generation
        watcher._cache[("staff:sam", "acme")] = kept
