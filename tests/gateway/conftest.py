"""Identity-assertion fixtures: an issuer, an audience, a fixed time, a grant and a signer."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.assertion import AssertionSigner, load_signer
from gateway.identity import ActingGrant, Principal, PrincipalKind
from policies.model import Scope

ISSUER = "https://gateway.localhost:8443"
AUDIENCE = "https://acme.localhost:8443"
NOW = 1_800_000_000.0


def acting_grant(expires_at: float = NOW + 3600, starts_at: float = NOW - 60) -> ActingGrant:
    """Sam (staff) acting as bob of acme under read grant r-1."""
    sam = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")
    return ActingGrant("r-1", "acme", "bob", sam, Scope.READ, starts_at, expires_at)


@pytest.fixture
def signer(tmp_path: Path) -> AssertionSigner:
    return load_signer(tmp_path / "keys", issuer=ISSUER, environ={})
