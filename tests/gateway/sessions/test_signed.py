"""The one signed-token format of return addresses and pre-login state."""

from __future__ import annotations

import pytest

from gateway.clock import ManualClock
from gateway.sessions import signed
from gateway.sessions.handoff import ReturnAddresses, browser_nonce
from gateway.sessions.prelogin import PreLoginSeal

KEY = b"k" * 32


def test_round_trip_until_expiry() -> None:
    token = signed.seal(KEY, "return", {"u": "https://a.example/"}, expires_at=100.0)
    body = signed.unseal(KEY, "return", token, now=99.9, max_length=4096)
    assert body == {"u": "https://a.example/", "e": 100.0}
    assert signed.unseal(KEY, "return", token, now=100.0, max_length=4096) is None
    assert signed.unseal(b"o" * 32, "return", token, now=0.0, max_length=4096) is None
    assert signed.unseal(KEY, "return", token, now=0.0, max_length=len(token) - 1) is None


def test_one_purpose_never_passes_for_another() -> None:
    clock = ManualClock()
    _, binding = browser_nonce(None)
    address = ReturnAddresses(KEY, clock).sign("https://acme.example/x", binding=binding)
    assert PreLoginSeal(KEY, clock, ttl_s=60).open(address) is None
    state = PreLoginSeal(KEY, clock, ttl_s=60).seal({"csrf": "t"})
    assert ReturnAddresses(KEY, clock).verify_bound(state, lambda host: True) is None
    token = signed.seal(KEY, "return", {"d": {"csrf": "t"}}, expires_at=clock.now() + 60)
    assert PreLoginSeal(KEY, clock, ttl_s=60).open(token) is None


@pytest.mark.parametrize(
    "token",
    [None, "", ".", "..", "a.b.c", "é.é", "\ud800.x", "x" * 5000, "e30.AAAA", "!!!.???"],
)
def test_hostile_tokens_are_none_never_an_error(token: str | None) -> None:
    assert signed.unseal(KEY, "return", token, now=0.0, max_length=4096) is None
