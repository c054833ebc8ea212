"""Reusing a recent assertion: only for exactly the same grant and audience, never stale."""

from __future__ import annotations

import dataclasses

import jwt
import pytest

from gateway.assertion import (
    MAX_LIFETIME_S,
    REUSE_MIN_LIFE_S,
    AssertionSigner,
    verify,
)
from gateway.errors import AssertionRefused
from gateway.identity import Principal, PrincipalKind
from policies.model import Scope
from tests.gateway.conftest import AUDIENCE, ISSUER, NOW, acting_grant


def _claims(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_a_recent_assertion_is_reused_while_it_has_four_minutes_left(
    signer: AssertionSigner,
) -> None:
    first = signer.assertion(acting_grant(), AUDIENCE, NOW)
    assert signer.assertion(acting_grant(), AUDIENCE, NOW + 0.5) == first
    last_reuse = NOW + MAX_LIFETIME_S - REUSE_MIN_LIFE_S
    assert signer.assertion(acting_grant(), AUDIENCE, last_reuse) == first
    later = signer.assertion(acting_grant(), AUDIENCE, last_reuse + 1)
    assert later != first
    claims = verify(later, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=last_reuse + 1)
    assert claims["exp"] == int(last_reuse + 1) + MAX_LIFETIME_S


def test_every_handed_out_assertion_verifies_with_enough_life_left(
    signer: AssertionSigner,
) -> None:
    for step in range(0, 1200, 7):
        now = NOW + step
        token = signer.assertion(acting_grant(), AUDIENCE, now)
        claims = verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=now)
        assert isinstance(claims["exp"], int)
        assert claims["exp"] - now >= REUSE_MIN_LIFE_S
        assert isinstance(claims["nbf"], int)
        assert claims["nbf"] <= now


@pytest.mark.parametrize(
    "change",
    [
        {"grant_id": "r-2"},
        {"member_id": "carol"},
        {"org": "other"},
        {"scope": Scope.WRITE},
        {"expires_at": NOW + 1800},
        {"starts_at": NOW - 30},
        {"actor": Principal(PrincipalKind.STAFF, "kim", "kim@vendor.example", "Kim")},
    ],
)
def test_a_different_grant_never_gets_the_same_token(
    signer: AssertionSigner, change: dict[str, object]
) -> None:
    first = signer.assertion(acting_grant(), AUDIENCE, NOW)
    other = dataclasses.replace(acting_grant(), **change)  # type: ignore[arg-type]
    token = signer.assertion(other, AUDIENCE, NOW)
    assert token != first
    claims = _claims(token)
    assert (claims["grant"], claims["sub"], claims["org"], claims["scope"]) == (
        other.grant_id,
        other.member_id,
        other.org,
        other.scope.value,
    )
    assert claims["act"] == {"sub": other.actor.id}


def test_another_audience_gets_its_own_token(signer: AssertionSigner) -> None:
    first = signer.assertion(acting_grant(), AUDIENCE, NOW)
    other = signer.assertion(acting_grant(), "https://beta.localhost:8443", NOW)
    assert other != first
    assert _claims(other)["aud"] == "https://beta.localhost:8443"


def test_near_the_grants_end_the_token_still_ends_with_the_grant(
    signer: AssertionSigner,
) -> None:
    end = NOW + 100.7
    first = signer.assertion(acting_grant(expires_at=end), AUDIENCE, NOW)
    assert _claims(first)["exp"] == int(end)
    # A fresh one would expire at the grant's end too: the recent one is as good.
    assert signer.assertion(acting_grant(expires_at=end), AUDIENCE, NOW + 50) == first
    with pytest.raises(AssertionRefused):
        signer.assertion(acting_grant(expires_at=end), AUDIENCE, end)


@pytest.mark.parametrize("starts_at", [NOW + 10])
def test_no_assertion_before_the_grant_starts_even_if_one_is_cached(
    signer: AssertionSigner, starts_at: float
) -> None:
    signer.assertion(acting_grant(starts_at=NOW - 60), AUDIENCE, NOW)
    with pytest.raises(AssertionRefused):
        signer.assertion(acting_grant(starts_at=starts_at), AUDIENCE, NOW)


def test_a_clock_gone_back_gets_a_fresh_token(signer: AssertionSigner) -> None:
    first = signer.assertion(acting_grant(), AUDIENCE, NOW)
    earlier = signer.assertion(acting_grant(), AUDIENCE, NOW - 5)
    assert earlier != first
    assert _claims(earlier)["nbf"] == int(NOW - 5)


def test_expired_tokens_are_pruned(signer: AssertionSigner) -> None:
    for n in range(20):
        grant = dataclasses.replace(acting_grant(), grant_id=f"r-{n}")
        signer.assertion(grant, AUDIENCE, NOW)
    signer.assertion(acting_grant(), AUDIENCE, NOW + MAX_LIFETIME_S + 1)
    remembered = {key[0] for key in signer._recent}
    assert "r-5" not in remembered  # long expired: already gone
    assert remembered == {"r-1"}


def test_the_reuse_table_is_bounded_under_many_audiences(
    signer: AssertionSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.assertion.REUSE_TABLE_SIZE", 8)
    for port in range(20):
        signer.assertion(acting_grant(), f"{AUDIENCE}:{port}", NOW)
    assert len(signer._recent) == 8
    audiences = {key[7] for key in signer._recent}
    assert audiences == {f"{AUDIENCE}:{port}" for port in range(12, 20)}
    # The newest is still reused; the oldest was dropped and is signed afresh.
    newest = signer.assertion(acting_grant(), f"{AUDIENCE}:19", NOW + 1)
    assert newest == signer.assertion(acting_grant(), f"{AUDIENCE}:19", NOW + 2)
