"""The stored bytes of a varied set of proxied requests, pinned by digest.

`test_exchange.py` holds the exchange's records to the builder and redactor's own path;
this file holds both paths, and the frames the writer's sealer makes of them, to the bytes
the audit trail has always stored: a change to a shared part (timestamps, redaction,
msgpack layout, the hash chain) that moved both paths at once would pass there and fails
here. The corpus is made from a seeded generator, so it is the same on every run.

A deliberate format change updates `CORPUS_DIGEST` (and needs a FORMAT_VERSION and a
converter: see `audit.frame`).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import exchange as exchange_module
from audit.errors import RecordError
from audit.exchange import ExchangeRecord, HttpExchange
from audit.frame import GENESIS_PREV, Frame, FrameSealer, encode_body
from audit.record import (
    TIMING_NAMES,
    BodyCapture,
    Person,
    http_record,
    packed_timestamp,
    timestamp,
)
from audit.redact import Redactor

JWT = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl"
STREAM = "20261129T000000Z-0123456789abcdef"
CORPUS_SIZE = 400
# sha256 over every record's stored bytes, by both paths, and every sealed frame.
CORPUS_DIGEST = "08ebb32996d320ed7b282362c6064ee6b1e84629d61ecce67d4eb7ad2601b62d"

TIMES = [
    0.0,
    0.0005,
    1_800_000_000.0,
    1_800_000_000.0004999,
    1_800_000_000.0005,
    1_800_000_000.25,
    1_800_000_000.9994999,
    1_800_000_000.9995,
    1_800_000_000.9999996,
    1_800_000_059.9999999,
    1_764_410_400.123456,
    253_402_300_798.9999,
    253_402_300_799.5,  # past the fast path's range
]
PEOPLE = [
    None,
    Person("sam", kind="staff", email="sam@vendor.example", name="Sam"),
    Person("sam", kind="staff", email="sam+Bearer abcdefgh12345@vendor.example"),
    Person("bob", kind="member", org="acme"),
    Person("alice", kind="member", email="alice@acme.example", org="acme", role="admin"),
    Person("eve", name=f"Eve {JWT}"),
]
TEXTS = [
    "",
    "x",
    "/invoices/42",
    "/caf\u00e9/\u00fcber",
    f"/cb/{JWT}",
    "Bearer abcdefgh12345",
    "token    abcdefgh12345",
    "[redacted:hmac-sha256:r1:0123456789abcdef0123456789abcdef]",
    "a" * 40,
]
QUERIES = [
    "",
    "page=2",
    "password=hunter2&x=1",
    "a=b&token=abc&c",
    "next=https://x.example/?access_token=abc#id_token=def",
    f"jwt={JWT}",
    "q=caf\u00e9;api_key=k",
]
HEADERS = [
    ("Host", "upstream:8080"),
    ("Accept", "*/*"),
    ("X-Forwarded-For", "192.0.2.7"),
    ("X-Gateway-Assertion", JWT),
    ("Cookie", "theme=dark; sid=s3cr3t; bare"),
    ("Authorization", "Bearer abcdefgh12345"),
    ("X-Api-Key", "k-123"),
    ("X-Auth-Token", "t-456"),
    ("X-Tenant-Secret", "configured"),
    ("Location", "https://x.example/cb?code=1&token=2"),
    ("Set-Cookie", "a=b; Path=/; HttpOnly"),
    ("Content-Type", "application/json; charset=utf-8"),
    ("Content-Length", "61"),
    ("Date", "Sun, 29 Nov 2026 11:50:00 GMT"),
    ("X-Note", "Bearer [redacted:hmac-sha256:r1:0123456789abcdef0123456789abcdef]"),
]
BODIES = [
    None,
    BodyCapture(b'{"ok":true,"items":[1,2,3]}', "application/json", 28),
    BodyCapture(b'{"password":"hunter2","note":"Bearer abcdefgh12345"}', "application/json", 52),
    BodyCapture(b'{"password":"hun', "application/json", 300),
    BodyCapture(b"user=a&password=b&x=1", "application/x-www-form-urlencoded", 21),
    BodyCapture(b"<Password>p</Password><Token><![CDATA[t]]></Token>", "text/xml", 50),
    BodyCapture(b"\xff\xfe binary", None, 9),
    BodyCapture(b"caf\xc3", "text/plain", 10),
    BodyCapture(JWT.encode(), "text/plain", len(JWT)),
]


def _exchange_arguments(rng: random.Random, n: int) -> dict[str, Any]:
    started = rng.choice([None, *TIMES])
    return {
        "request_id": f"{n:016x}",
        "method": rng.choice(["GET", "GET", "POST", "DELETE", "OPTIONS", "Bearer abcdefgh12345"]),
        "host": rng.choice(["acme.gateway.example", "xn--caf-dma.example", f"{JWT}.example"]),
        "path": rng.choice(TEXTS[1:]),
        "query": rng.choice(QUERIES),
        "scheme": rng.choice(["https", "http"]),
        "client_ip": rng.choice([None, "192.0.2.7", "2001:db8::1"]),
        "user_agent": rng.choice([None, "wrk", "Mozilla/5.0 (X11; Linux x86_64)", *TEXTS[4:6]]),
        "actor": rng.choice(PEOPLE),
        "effective": rng.choice(PEOPLE),
        "org": rng.choice([None, "acme"]),
        "grant_id": rng.choice([None, "g-123", "g-123"]),
        "scope": rng.choice([None, "read", "write"]),
        "route": rng.choice([None, "acme"]),
        "session_id": rng.choice([None, "console-session-1"]),
        "decision": rng.choice([None, "allow", "deny"]),
        "reason": rng.choice([None, "no rule matched; route acme default is allow", *TEXTS[5:7]]),
        "rule": rng.choice([None, "config/policies/acme.yaml:12", JWT]),
        "started_at": started,
    }


def _outcome_arguments(rng: random.Random) -> dict[str, Any]:
    own: dict[str, Any] = {
        "status": rng.choice([None, 200, 204, 302, 404, 502]),
        "request_bytes": rng.choice([None, 0, 127, 70_000]),
        "response_bytes": rng.choice([None, 0, 61, 1 << 33]),
        "timings": rng.choice(
            [None, {}, {"total": 2.1, "wait": 1.5, "receive": 0.6}, {"connect": 3, "total": 0}]
        ),
        "request_headers": rng.choice([None, rng.sample(HEADERS, rng.randint(0, 8))]),
        "response_headers": rng.choice([None, rng.sample(HEADERS, rng.randint(0, 5))]),
        "request_body": rng.choice(BODIES),
        "response_body": rng.choice(BODIES),
    }
    if rng.random() < 0.3:
        own["error"] = rng.choice(["no_grant", "aborted", "internal_error"])
        if rng.random() < 0.7:
            own["reason"] = rng.choice([None, "gone", f"refused: Bearer {JWT}"])
    return own


def _at(rng: random.Random) -> float:
    """A record's time: now and then one far from any start (a duration too long to hold)."""
    return rng.choice(TIMES if rng.random() < 0.1 else TIMES[:-2])


def _records(redactor: Redactor) -> list[tuple[ExchangeRecord, bytes | None]]:
    """The corpus: each record and its stored bytes by the exchange's path (None: refused,
    e.g. a duration of more than 2**64 ns)."""
    rng = random.Random(20261129)
    out: list[tuple[ExchangeRecord, bytes | None]] = []
    for n in range(CORPUS_SIZE):
        exchange = HttpExchange(**_exchange_arguments(rng, n))
        records = [exchange.attempt(_at(rng))]
        records += [exchange.outcome(_at(rng), **_outcome_arguments(rng))]
        if rng.random() < 0.2:
            records.append(exchange.outcome(_at(rng), **_outcome_arguments(rng)))
        for record in records:
            try:
                out.append((record, record.encode(redactor)))
            except RecordError:
                out.append((record, None))
    return out


def _reference(redactor: Redactor, record: ExchangeRecord) -> bytes | None:
    """The builder and redactor's own path (None: refused)."""
    try:
        body = http_record(record.phase, **record.arguments())
        return redactor.scrub_encoded(body, encode_body)
    except RecordError:
        return None


def test_the_corpus_is_stored_as_it_always_was() -> None:
    redactor = Redactor(b"r" * 32, "r1", headers={"x-tenant-secret"}, fields={"pin"})
    digest = hashlib.sha256()
    sealer = FrameSealer(STREAM)
    head = GENESIS_PREV
    redactions = refused = 0
    seq = 0
    for record, stored in _records(redactor):
        # The builder and redactor's own path: the same bytes, or the same refusal.
        assert stored == _reference(redactor, record)
        if stored is None:
            refused += 1
            digest.update(b"refused")
            continue
        # Again, now from the memos the first encoding filled.
        assert record.encode(redactor) == stored
        h, frame = sealer.seal(seq, head, stored)
        assert Frame.seal(STREAM, seq, head, stored).encode() == frame
        head = h
        seq += 1
        digest.update(len(frame).to_bytes(4, "big") + frame)
        redactions += len(msgpack.unpackb(stored).get("gateway", {}).get("redactions", []))
    assert redactions > CORPUS_SIZE  # the corpus redacts, and much
    assert 0 < refused < CORPUS_SIZE // 10
    assert digest.hexdigest() == CORPUS_DIGEST


def test_timestamps_are_stored_as_they_always_were() -> None:
    rng = random.Random(7)
    times = [*TIMES, *(rng.uniform(0, 4e9) for _ in range(2000))]
    times += [second + frac for second in (0, 1_800_000_000) for frac in (0.0005, 0.9995)]
    text = "\n".join(timestamp(at) for at in times)
    assert hashlib.sha256(text.encode()).hexdigest() == TIMESTAMPS_DIGEST


TIMESTAMPS_DIGEST = "4525e815aa7115e0c00439215956a0f19a773790f6ce319afa737e199d241fee"


def test_packed_timestamps_are_the_timestamps_msgpack_packs() -> None:
    rng = random.Random(11)
    times = [*TIMES, *(rng.uniform(0, 4e9) for _ in range(3000)), 1e-7, 59.9995, 86_399.9999999]
    times += [253_402_300_798.9999996, 253_402_300_799.0, -0.0, -0.4, -1.5, -86_400.25]
    # Back and forth between seconds: each answer is its own second's, whatever came before.
    times += [1_800_000_000.5, 1_800_000_001.5, 1_800_000_000.25, 1_800_000_000.9999996]
    for at in times:
        text = timestamp(at)
        assert packed_timestamp(at) == msgpack.packb(text), at
        if 0 <= at < 253_402_300_799.0:
            reference = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
            assert text == reference.replace("+00:00", "Z"), at


@pytest.mark.parametrize("at", [math.nan, math.inf, -math.inf, 1e12, 1e20, -1e20])
def test_an_impossible_time_is_refused_alike(at: float) -> None:
    with pytest.raises((ValueError, OverflowError, OSError)) as text_error:
        timestamp(at)
    with pytest.raises(text_error.type):
        packed_timestamp(at)


def _reference_timings(timings: dict[str, Any]) -> dict[str, float]:
    """The builder's rule for timings, one by one: known names, numbers >= 0, as floats."""
    out: dict[str, float] = {}
    for name, value in timings.items():
        if name not in TIMING_NAMES:
            raise RecordError(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise RecordError(name)
        out[name] = float(value)
    return out


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(TIMING_NAMES), "lunch", ""]),
        st.floats()
        | st.integers(min_value=-3, max_value=10**20)
        | st.booleans()
        | st.none()
        | st.sampled_from([-0.0, 0.0, math.inf, "1", 1.5]),
        max_size=8,
    )
)
def test_timings_are_checked_and_kept_as_the_builder_does(timings: dict[str, Any]) -> None:
    try:
        expected: dict[str, float] | None = _reference_timings(timings)
    except RecordError:
        expected = None
    record = HttpExchange(request_id="r", method="GET", host="h", path="/", grant_id="g")
    if expected is None:
        with pytest.raises(RecordError, match=r"gateway\.timings"):
            record.outcome(1e9, timings=timings)
        return
    stored = msgpack.unpackb(record.outcome(1e9, timings=timings).encode(Redactor(b"r" * 32)))
    kept = stored["gateway"]["timings"]
    assert list(kept) == list(expected)
    assert [struct.pack(">d", value) for value in kept.values()] == [
        struct.pack(">d", value) for value in expected.values()
    ]


def test_the_header_notes_memo_is_bounded_and_holds_no_value() -> None:
    # Each header list names another denylisted URL parameter: a distinct redaction list.
    redactor = Redactor(b"r" * 32, "r1")
    exchange = HttpExchange(request_id="r", method="GET", host="h", path="/", grant_id="g")
    for n in range(exchange_module.HEADER_NOTES_MEMO * 2):
        headers = [("Referer", f"https://x.example/?token_{n}=s3cr3t-{n}")]
        record = exchange.outcome(1e9, request_headers=headers, response_headers=headers)
        stored = record.encode(redactor)
        assert stored == _reference(redactor, record)
        assert f"s3cr3t-{n}".encode() not in stored
        assert len(exchange_module._HEADER_NOTES) <= exchange_module.HEADER_NOTES_MEMO
    assert "s3cr3t" not in repr(exchange_module._HEADER_NOTES)
    fields = msgpack.unpackb(stored)["gateway"]["redactions"]
    last = exchange_module.HEADER_NOTES_MEMO * 2 - 1
    assert fields == [
        {"field": f"http.request.headers.referer:token_{last}", "kind": "field"},
        {"field": f"http.response.headers.referer:token_{last}", "kind": "field"},
    ]


def test_the_header_notes_memo_keeps_no_token_named_parameter() -> None:
    # SECURITY: a parameter named after a token is listed in the record (its value is
    # redacted), but not kept past its request by the memo.
    exchange_module._HEADER_NOTES.clear()
    redactor = Redactor(b"r" * 32, "r1")
    exchange = HttpExchange(request_id="r", method="GET", host="h", path="/", grant_id="g")
    headers = [("Referer", f"https://x.example/?token_{JWT}=v"), ("Accept", "*/*")]
    record = exchange.outcome(1e9, request_headers=headers)
    for _ in range(2):
        assert record.encode(redactor) == _reference(redactor, record)
    assert JWT not in repr(exchange_module._HEADER_NOTES)
    kept = [("Referer", "https://x.example/?token_1=v"), ("Accept", "*/*")]
    record = exchange.outcome(1e9, request_headers=kept)
    assert record.encode(redactor) == _reference(redactor, record)
    assert len(exchange_module._HEADER_NOTES) == 1
