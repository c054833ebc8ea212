"""The two records of one proxied request: byte for byte what the builder and redactor store.

`HttpExchange` redacts and lays out the shared parts once; these tests hold its records
to the reference path, `redactor.scrub_encoded(http_record(...), encode_body)`, on
ordinary and hostile input, and check its memos are bounded and keyed by what they hold.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import exchange as exchange_module
from audit.errors import RecordError
from audit.exchange import ExchangeRecord, HttpExchange
from audit.frame import encode_body
from audit.record import UNTRUSTED_TEXT, BodyCapture, Person, http_record
from audit.redact import LIST_MEMO, MARKER, PAIR_MEMO, Redactor, find_plaintext_secrets

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl"
SAM = Person("sam", kind="staff", email="sam@vendor.example", name="Sam")
BOB = Person("bob", kind="member", org="acme")

SHARED: dict[str, Any] = {
    "request_id": "0123456789abcdef",
    "method": "GET",
    "host": "acme.example",
    "path": "/invoices",
    "query": "page=2",
    "scheme": "https",
    "client_ip": "192.0.2.7",
    "user_agent": "Mozilla/5.0",
    "actor": SAM,
    "effective": BOB,
    "org": "acme",
    "grant_id": "g-1",
    "scope": "write",
    "route": "acme",
    "session_id": "console-session-1",
    "decision": "allow",
    "reason": "no rule matched; route acme default is allow",
    "rule": None,
    "started_at": 1_800_000_000.25,
}
OUTCOME: dict[str, Any] = {
    "status": 200,
    "request_bytes": 0,
    "response_bytes": 61,
    "timings": {"total": 5.2, "wait": 5.0, "receive": 0.2},
    "request_headers": [
        ("X-Forwarded-For", "192.0.2.7"),
        ("Host", "upstream:8080"),
        ("X-Gateway-Assertion", JWT),
        ("Cookie", "theme=dark; sid=s3cr3t"),
        ("Authorization", "Bearer abcdefgh12345"),
    ],
    "response_headers": [("Content-Type", "application/json"), ("Set-Cookie", "a=b; Path=/")],
    "request_body": None,
    "response_body": None,
}


def reference(redactor: Redactor, record: ExchangeRecord) -> bytes:
    """What the builder and the redactor's own path store for the same arguments."""
    return redactor.scrub_encoded(http_record(record.phase, **record.arguments()), encode_body)


def both_phases(shared: dict[str, Any], outcome: dict[str, Any]) -> list[ExchangeRecord]:
    exchange = HttpExchange(**shared)
    return [exchange.attempt(1_800_000_000.5), exchange.outcome(1_800_000_000.75, **outcome)]


def test_records_are_the_builders_byte_for_byte() -> None:
    redactor = Redactor(b"r" * 32, "r1")
    for record in both_phases(SHARED, OUTCOME):
        assert record.encode(redactor) == reference(redactor, record)
        assert dict(record) == http_record(record.phase, **record.arguments())
    attempt, outcome = both_phases(SHARED, OUTCOME)
    stored = msgpack.unpackb(outcome.encode(redactor))
    assert stored["record"] == "http.outcome"
    assert find_plaintext_secrets(stored) == []
    assert JWT not in json.dumps(stored)
    kinds = [(r["field"], r["kind"]) for r in stored["gateway"]["redactions"]]
    assert kinds == [
        ("http.request.headers", "jwt"),
        ("http.request.headers.cookie", "header"),
        ("http.request.headers.authorization", "header"),
        ("http.response.headers.set-cookie", "header"),
    ]
    assert msgpack.unpackb(attempt.encode(redactor))["record"] == "http.attempt"


def test_both_records_of_an_exchange_share_its_checked_parts() -> None:
    redactor = Redactor(b"r" * 32, "r1")
    exchange = HttpExchange(**SHARED)
    first = msgpack.unpackb(exchange.attempt(1_800_000_001.0).encode(redactor))
    second = msgpack.unpackb(exchange.outcome(1_800_000_002.0, **OUTCOME).encode(redactor))
    for key in ("user", "organization", "source", "user_agent", "url"):
        assert first[key] == second[key]
    assert first["event"]["start"] == second["event"]["start"] == "2027-01-15T08:00:00.250Z"
    assert second["event"]["end"] == second["@timestamp"] == "2027-01-15T08:00:02.000Z"


def test_a_denial_replaces_the_reason_in_the_outcome_only() -> None:
    redactor = Redactor(b"r" * 32, "r1")
    exchange = HttpExchange(**SHARED)
    attempt = exchange.attempt(1_800_000_001.0)
    denial = exchange.outcome(1_800_000_002.0, error="no_grant", reason=f"gone: Bearer {JWT}")
    for record in (attempt, denial, exchange.outcome(1_800_000_003.0, status=502)):
        assert record.encode(redactor) == reference(redactor, record)
    stored = msgpack.unpackb(denial.encode(redactor))
    assert stored["record"] == "http.denial"
    assert stored["gateway"]["decision"]["reason"] == stored["error"]["message"]
    assert MARKER.search(stored["error"]["message"])
    assert (
        msgpack.unpackb(attempt.encode(redactor))["gateway"]["decision"]["reason"]
        == (SHARED["reason"])
    )


@pytest.mark.parametrize(
    "change",
    [
        {"grant_id": None, "scope": None},  # a session only
        {"grant_id": None, "session_id": None, "scope": None},  # the builder's own layout
        {"grant_id": None, "session_id": None},  # a scope with neither
        {"grant_id": None},  # a scope without a grant id, after the session
        {"actor": None},
        {"effective": None},
        {"actor": None, "effective": None, "org": None},
        {"decision": None, "reason": None},
        {"query": ""},
        {"started_at": None},
        {"user_agent": None, "client_ip": None, "route": None},
        {"rule": "config/policies/acme.yaml:12", "decision": "deny"},
    ],
)
def test_every_shape_is_the_builders(change: dict[str, Any]) -> None:
    redactor = Redactor(b"r" * 32, "r1")
    records = both_phases({**SHARED, **change}, OUTCOME)
    records.append(HttpExchange(**{**SHARED, **change}).outcome(2e9, error="aborted"))
    for record in records:
        assert record.encode(redactor) == reference(redactor, record)
        assert dict(record) == http_record(record.phase, **record.arguments())


def test_untrusted_text_is_where_the_exchange_scans() -> None:
    # The exchange scans exactly these fields, in this order; a change here needs one there.
    assert UNTRUSTED_TEXT == (
        (("http", "request"), ("method",)),
        (("url",), ("domain", "path", "query")),
        (("user_agent",), ("original",)),
        (("error",), ("code", "message")),
        (("gateway", "decision"), ("reason", "rule")),
        (("user",), ("email", "full_name")),
        (("user", "effective"), ("email", "full_name")),
        (("http", "request", "body"), ("mime_type", "content")),
        (("http", "response", "body"), ("mime_type", "content")),
    )


TOKENISH = st.sampled_from(
    [
        "",
        "x",
        JWT,
        f"see {JWT} here",
        "Bearer abcdefgh12345",
        "token    abcdefgh12345",
        "baſic abcdefgh12345",
        "[redacted:hmac-sha256:r1:0123456789abcdef0123456789abcdef]",
        "Bearer [redacted:hmac-sha256:r1:0123456789abcdef0123456789abcdef]",
        "password=hunter2&x=1",
        "a=b&token=abc&c",
        '{"password": "hunter2", "x": 1}',
        "eyJ",
        "caf\u00e9 \u00a0Bearer\u00a0abcdefgh12345",
    ]
)
TEXT = TOKENISH | st.text(max_size=30)
HEADER_NAMES = st.sampled_from(
    ["Accept", "Cookie", "Set-Cookie", "Authorization", "X-Api-Key", " cookie", "X-Note", JWT]
)
BODIES = st.none() | st.builds(
    BodyCapture,
    st.sampled_from(
        [
            b'{"password":"hunter2","note":"Bearer abcdefgh12345"}',
            b'{"password":"hun',
            b"token=abc&x=1",
            b"\xff\xfe binary",
            b"caf\xc3",
            JWT.encode(),
        ]
    ),
    st.sampled_from(
        [None, "application/json", "application/x-www-form-urlencoded", "text/plain", f"x/{JWT}"]
    ),
    st.integers(min_value=0, max_value=100),
)
PEOPLE = st.none() | st.builds(
    Person,
    st.sampled_from(["sam", "bob"]),
    kind=st.sampled_from([None, "staff", "member"]),
    email=st.none() | TEXT,
    name=st.none() | TEXT,
    org=st.none() | st.just("acme"),
    role=st.none() | st.just("admin"),
)


@settings(max_examples=300, deadline=None)
@given(
    method=TEXT,
    path=TEXT,
    query=TEXT,
    user_agent=st.none() | TEXT,
    actor=PEOPLE,
    effective=PEOPLE,
    grant_id=st.none() | st.just("g-1"),
    scope=st.none() | st.just("read"),
    session_id=st.none() | st.just("s-1"),
    decision=st.sampled_from([None, "allow", "deny"]),
    reason=st.none() | TEXT,
    rule=st.none() | TEXT,
    error=st.none() | st.sampled_from(["no_grant", "aborted"]),
    denial_reason=st.none() | TEXT,
    status=st.none() | st.sampled_from([200, 404, 503]),
    headers=st.none() | st.lists(st.tuples(HEADER_NAMES, TEXT), max_size=4),
    request_body=BODIES,
    response_body=BODIES,
)
def test_hostile_exchanges_store_what_the_builder_and_redactor_store(
    method: str,
    path: str,
    query: str,
    user_agent: str | None,
    actor: Person | None,
    effective: Person | None,
    grant_id: str | None,
    scope: str | None,
    session_id: str | None,
    decision: str | None,
    reason: str | None,
    rule: str | None,
    error: str | None,
    denial_reason: str | None,
    status: int | None,
    headers: list[tuple[str, str]] | None,
    request_body: BodyCapture | None,
    response_body: BodyCapture | None,
) -> None:
    shared = {
        **SHARED,
        "method": method,
        "path": path,
        "query": query,
        "user_agent": user_agent,
        "actor": actor,
        "effective": effective,
        "grant_id": grant_id,
        "scope": scope,
        "session_id": session_id,
        "decision": decision,
        "reason": reason,
        "rule": rule,
    }
    outcome: dict[str, Any] = {
        "error": error,
        "status": status,
        "request_headers": headers,
        "response_headers": headers,
        "request_body": request_body,
        "response_body": response_body,
    }
    if error is not None:
        outcome["reason"] = denial_reason
    redactor = Redactor(b"r" * 32, "r1", headers={"x-note"})
    exchange = HttpExchange(**shared)
    # Twice each: the second encoding comes from the memos the first one filled.
    for record in [exchange.attempt(1.5e9), exchange.outcome(1.6e9, **outcome)] * 2:
        assert record.encode(redactor) == reference(redactor, record)


def test_what_the_builder_refuses_the_exchange_refuses() -> None:
    with pytest.raises(RecordError, match=r"gateway\.decision"):
        HttpExchange(**{**SHARED, "decision": "maybe"})
    with pytest.raises(RecordError, match=r"url\.path"):
        HttpExchange(**{**SHARED, "path": "/" * 9000})
    with pytest.raises(RecordError, match=r"user\.email"):
        HttpExchange(**{**SHARED, "actor": Person("sam", email=7)})  # type: ignore[arg-type]
    exchange = HttpExchange(**SHARED)
    with pytest.raises(RecordError, match="status_code"):
        exchange.outcome(2e9, status=1000)
    with pytest.raises(RecordError, match=r"http\.response\.bytes"):
        exchange.outcome(2e9, response_bytes=-1)
    with pytest.raises(RecordError, match="timings"):
        exchange.outcome(2e9, timings={"lunch": 1.0})
    with pytest.raises(RecordError, match=r"error\.code"):
        exchange.outcome(2e9, error="x" * 9000)
    for pairs in ([["X-List", ["v"]]], [("X-Number", 7)], [(b"X-Bytes", "v")]):
        refused = exchange.outcome(2e9, response_headers=pairs)  # type: ignore[arg-type]
        with pytest.raises(RecordError, match=r"http\.response\.headers"):
            refused.encode(Redactor(b"r" * 32))
    listed = exchange.outcome(2e9, response_headers=[["X-List", "v"]])  # type: ignore[list-item]
    assert listed.encode(Redactor(b"r" * 32)) == reference(Redactor(b"r" * 32), listed)
    long_header = exchange.outcome(2e9, request_headers=[("X-Long", "v" * 9000)])
    with pytest.raises(RecordError, match=r"http\.request\.headers"):
        long_header.encode(Redactor(b"r" * 32))
    with pytest.raises(RecordError, match=r"http\.request\.headers"):
        dict(long_header)


def test_the_header_memo_is_bounded_and_skips_secrets() -> None:
    redactor = Redactor(b"r" * 32, "r1")
    for n in range(PAIR_MEMO * 3):
        redactor.header_pair("X-Request-Number", str(n))
        assert len(redactor._pairs) <= PAIR_MEMO
    for n in range(LIST_MEMO * 3):
        redactor.header_list((("Accept", "*/*"), ("X-N", str(n))), lambda name, value: None)
        assert len(redactor._lists) <= LIST_MEMO
    secret = (("Accept", "*/*"), ("Cookie", "sid=s3cr3t"))
    stored, redactions = redactor.header_list(secret, lambda name, value: None)
    assert redactions == ((".cookie", "header"),)
    assert b"s3cr3t" not in stored
    pairs = len(redactor._pairs)
    redactor.header_pair("X-Long", "v" * 2000)
    assert len(redactor._pairs) == pairs  # too long to keep
    redactor.header_pair("Authorization", "Bearer abcdefgh12345")
    redactor.header_pair("Cookie", "sid=s3cr3t")
    # Kept, but under a keyed digest: neither secret is anywhere in the memos.
    held = repr((redactor._pairs, redactor._lists))
    assert "s3cr3t" not in held
    assert "abcdefgh12345" not in held


def test_the_header_memo_answers_what_the_redactor_computes() -> None:
    redactor = Redactor(b"r" * 32, "r1")
    other = Redactor(b"o" * 32, "o1")
    first = redactor.header_pair("X-Gateway-Assertion", JWT)
    assert first == redactor.header_pair("X-Gateway-Assertion", JWT)  # from the memo
    assert first[1] == (("", "jwt"),)
    assert first[0][1] == redactor.hash(JWT)
    # Another redactor (another key) never sees the first one's answers.
    assert other.header_pair("X-Gateway-Assertion", JWT)[0][1] == other.hash(JWT)
    assert other.hash(JWT) != redactor.hash(JWT)


def test_the_shared_parts_are_redacted_once_per_redactor() -> None:
    exchange = HttpExchange(**{**SHARED, "user_agent": f"agent Bearer {'x' * 12}"})
    first, second = Redactor(b"r" * 32, "r1"), Redactor(b"o" * 32, "o1")
    for redactor in (first, second, first):
        for record in (exchange.attempt(2e9), exchange.outcome(2e9, status=200)):
            stored = msgpack.unpackb(record.encode(redactor))
            assert redactor.key_id in stored["user_agent"]["original"]
            assert record.encode(redactor) == reference(redactor, record)


def test_identity_memo_is_bounded_and_keyed_by_every_shared_fact() -> None:
    exchange_module._IDENTITIES.clear()
    for n in range(exchange_module.IDENTITY_MEMO * 2):
        HttpExchange(**{**SHARED, "client_ip": f"192.0.2.{n % 250}/{n}"})
        assert len(exchange_module._IDENTITIES) <= exchange_module.IDENTITY_MEMO
    HttpExchange(**SHARED)
    # SECURITY: the session id is a credential; the memo holds only its ref.
    assert all(SHARED["session_id"] not in key for key in exchange_module._IDENTITIES)
    redactor = Redactor(b"r" * 32, "r1")
    # Two exchanges differing in one shared fact each store their own.
    for key, value in [
        ("actor", Person("sam", kind="staff", email="other@vendor.example")),
        ("effective", Person("carol", kind="member", org="acme")),
        ("org", "other"),
        ("grant_id", "g-2"),
        ("scope", "read"),
        ("route", "other"),
        ("session_id", "s-2"),
        ("client_ip", "198.51.100.1"),
        ("user_agent", "curl"),
        ("decision", "deny"),
        ("reason", "rule 2"),
        ("rule", "r2"),
    ]:
        base = msgpack.unpackb(HttpExchange(**SHARED).attempt(2e9).encode(redactor))
        changed = HttpExchange(**{**SHARED, key: value}).attempt(2e9)
        assert changed.encode(redactor) == reference(redactor, changed)
        assert msgpack.unpackb(changed.encode(redactor)) != base, key


def _memo_text(redactor: Redactor) -> str:
    """Everything the redactor's header memos and the exchange module's memo keys hold."""
    held: list[Any] = [redactor._pairs, redactor._lists]
    for key, identity in exchange_module._IDENTITIES.items():
        held.append(key)
        if identity.redacted is not None:
            held.append(list(identity.redacted._decisions))
    return repr(held)


def test_no_client_secret_outlives_its_request_in_the_memos() -> None:
    # SECURITY: a token sent in a header no name marks as secret, in a user agent or in a
    # denial's reason is redacted in the record, and never kept in a memo in plain text.
    exchange_module._IDENTITIES.clear()
    redactor = Redactor(b"r" * 32, "r1")
    secret = "Bearer s3cr3t-t0ken-42"
    pairs = [("Accept", "*/*"), ("X-Upstream-Auth", secret), ("X-Trace", JWT)]
    exchange = HttpExchange(**{**SHARED, "user_agent": f"agent {secret}"})
    records = [
        exchange.attempt(2e9),
        exchange.outcome(2e9, status=200, request_headers=pairs, response_headers=pairs[1:2]),
        exchange.outcome(2e9, error="no_grant", reason=f"refused: {secret}"),
    ]
    for record in records * 2:
        stored = record.encode(redactor)
        assert b"s3cr3t" not in stored
        assert stored == reference(redactor, record)
    held = _memo_text(redactor)
    assert "s3cr3t" not in held
    assert JWT not in held
    # Headers are still remembered (by a keyed digest), and identities holding no secret.
    assert redactor.header_pair("Accept", "*/*") is redactor.header_pair("Accept", "*/*")
    listed = tuple(pairs)
    assert redactor.header_list(listed, _no_check) is redactor.header_list(listed, _no_check)
    clean = HttpExchange(**SHARED)
    clean.outcome(2e9, error="no_grant", reason="gone").encode(redactor)
    assert len(exchange_module._IDENTITIES) == 1


def _no_check(name: object, value: object) -> None:
    return None
