"""The audit stages' own parts: timings as records hold them, the persons they remember."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.frame import encode_body
from audit.record import MAX_TEXT
from audit.redact import Redactor
from gateway.identity import Principal, PrincipalKind
from gateway.stages import audit_fields
from gateway.stages.audit_out import millis


@settings(max_examples=2000, deadline=None)
@given(
    seconds=st.floats(min_value=0.0, max_value=1e7)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=0, max_value=10**9).map(lambda n: n / 2e6)  # exact halves
)
def test_millis_is_round_to_three_places_bit_for_bit(seconds: float) -> None:
    expected = round(seconds * 1000, 3)
    assert struct.pack(">d", millis(seconds)) == struct.pack(">d", expected)


def test_millis_on_halves_signs_and_the_unbounded() -> None:
    for seconds in [0.0, -0.0, 0.0000005, 0.0000015, 0.0000025, -0.0000001, 1e12, 2.5e-7]:
        assert struct.pack(">d", millis(seconds)) == struct.pack(">d", round(seconds * 1000, 3))
    assert math.isinf(millis(math.inf))
    assert math.isnan(millis(math.nan))
    assert millis(0.0052) == 5.2


def test_remembered_persons_are_bounded_and_keyed_by_every_field() -> None:
    sam = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")
    assert audit_fields.person(sam) is audit_fields.person(sam)
    renamed = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Samuel")
    assert audit_fields.person(renamed).name == "Samuel"
    admin = Principal(PrincipalKind.MEMBER, "sam", "sam@acme.example", "Sam", "acme", "admin")
    assert audit_fields.person(admin).role == "admin"
    assert audit_fields.person(admin).kind == "member"
    for n in range(audit_fields.PERSON_MEMO * 2):
        audit_fields.person(Principal(PrincipalKind.STAFF, f"s{n}", "", ""))
        audit_fields.member(f"m{n}", "acme")
        assert len(audit_fields._PERSONS) <= audit_fields.PERSON_MEMO
        assert len(audit_fields._MEMBERS) <= audit_fields.PERSON_MEMO
    assert audit_fields.member("bob", "acme").org == "acme"
    assert audit_fields.member("bob", "other").org == "other"


def test_the_last_principal_is_answered_without_a_lookup_and_never_for_another() -> None:
    sam = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")
    alice = Principal(PrincipalKind.MEMBER, "alice", "alice@acme.example", "Alice", "acme", "admin")
    first = audit_fields.person(sam)
    assert audit_fields.person(sam) is first  # the same object again: the last answer
    # Back and forth: each principal gets its own, an equal one the same as the original.
    for _ in range(3):
        assert audit_fields.person(alice).id == "alice"
        assert audit_fields.person(alice).role == "admin"
        assert audit_fields.person(sam) == first
    equal = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")
    assert audit_fields.person(equal) == first
    renamed = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Samuel")
    assert audit_fields.person(renamed).name == "Samuel"
    assert audit_fields.person(sam).name == "Sam"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; x=" + "a" * 20_000,  # within the server's header limit
        "text/plain; charset=\udcff\udcfe",  # undecodable bytes, as aiohttp hands them over
    ],
)
def test_a_hostile_content_type_never_costs_the_outcome_record(content_type: str) -> None:
    captured = audit_fields.capture(bytearray(b'{"password": "hunter2-pw"}'), 26, content_type)
    assert captured is not None
    body = captured.ecs()  # a RecordError here would lose the whole outcome record
    stored = Redactor(b"r" * 32).scrub_encoded({"http": {"request": {"body": body}}}, encode_body)
    assert b"hunter2" not in stored
    assert len(body["mime_type"]) <= MAX_TEXT


def test_exchanged_headers_are_kept_as_given_only_when_a_record_can_hold_them() -> None:
    plain = [("Host", "acme.localhost"), ("X-Gateway-Assertion", "e" * 600)]
    assert audit_fields.headers(plain) is plain  # the common case: nothing copied
    assert audit_fields.headers([]) == []
    hostile = [("X-Bytes", "caf\udce9"), ("X-Long", "a" * (MAX_TEXT + 5)), ("Ok", "1")]
    held = audit_fields.headers(hostile)
    assert held[0] == ("X-Bytes", "caf\ufffd")  # undecodable bytes replaced, not a failure
    assert held[1] == ("X-Long", "a" * MAX_TEXT)  # cut to the record's limit
    assert held[2] == ("Ok", "1")
    # Each within the limit but together over it: checked one by one, kept whole.
    many = [(f"X-{n}", "v" * 4000) for n in range(4)]
    assert audit_fields.headers(many) == many
    for name, value in audit_fields.headers(hostile) + audit_fields.headers(many):
        assert encode_body({"name": name, "value": value})  # storable as a record holds it
