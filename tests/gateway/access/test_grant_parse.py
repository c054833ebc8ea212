"""Parsing a live-grant pointer once and judging its times at each check (`ParsedGrant`)."""

from __future__ import annotations

import pytest

from gateway.access.store import GrantFacts, grant_check_from, parse_grant

POINTER = {
    "id": "r-1",
    "org": "acme",
    "member": "bob",
    "actor_kind": "staff",
    "actor_id": "sam",
    "actor_email": "sam@vendor.example",
    "actor_name": "Sam",
    "scope": "write",
    "state": "approved",
    "starts_at": "1000.000",
    "expires_at": "2000.000",
}
MEMBER = {"id": "bob", "role": "member", "impersonable": "1", "disabled": "0"}


def _facts(member: dict[str, str] | None = None, **changes: str) -> GrantFacts:
    return GrantFacts({**POINTER, **changes}, MEMBER if member is None else member)


@pytest.mark.parametrize(
    ("facts", "now", "error"),
    [
        (_facts(), 999.0, "no_grant"),
        (_facts(), 1000.0, None),
        (_facts(), 1999.9, None),
        (_facts(), 2000.0, "grant_expired"),
        (_facts(state="expired"), 1500.0, "grant_expired"),
        (_facts(state="revoked"), 1500.0, "grant_revoked"),
        (_facts(state="revoked"), 5000.0, "grant_revoked"),
        (_facts(state="pending"), 1500.0, "no_grant"),
        (_facts(starts_at="soon"), 1500.0, "no_grant"),
        (_facts(scope="admin"), 1500.0, "no_grant"),
        (_facts(starts_at="nan"), 1500.0, "no_grant"),
        (_facts(expires_at="nan"), 1500.0, "no_grant"),
        (_facts(expires_at="inf"), 1500.0, "no_grant"),
        (_facts({**MEMBER, "disabled": "1"}), 1500.0, "member_not_impersonable"),
        (_facts({**MEMBER, "disabled": "1"}), 2500.0, "grant_expired"),
        (_facts({}), 1500.0, "member_not_impersonable"),
        (_facts({**MEMBER, "role": "admin"}), 1500.0, "member_not_impersonable"),
        (GrantFacts({}, MEMBER), 1500.0, "no_grant"),
    ],
)
def test_one_parse_judged_at_many_times_matches_a_fresh_check(
    facts: GrantFacts, now: float, error: str | None
) -> None:
    parsed = parse_grant(facts)
    for _ in range(2):
        result = parsed.at(now)
        assert result.error == error
        assert (result.grant is None) == (error is not None)
        assert result == grant_check_from(facts, now)


def test_a_parsed_grant_moves_with_the_clock() -> None:
    parsed = parse_grant(_facts())
    assert [parsed.at(t).error for t in (500.0, 1500.0, 2500.0)] == [
        "no_grant",
        None,
        "grant_expired",
    ]


def test_an_admin_member_is_acted_as_only_where_the_org_allows() -> None:
    admin = {**MEMBER, "role": "admin"}
    allowed = GrantFacts(dict(POINTER), admin, admins_impersonable=True)
    assert parse_grant(allowed).at(1500.0).grant is not None
