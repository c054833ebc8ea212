"""Redaction: no denylisted value survives anywhere in a record, and equal secrets correlate."""

from __future__ import annotations

import json
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.frame import encode_body
from audit.record import BodyCapture, Person, event_record, http_record
from audit.redact import MARKER, Denylist, Redactor, find_plaintext_secrets
from tests.audit.conftest import bare_http_record

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl"
SECRETS = ["hunter2-pw", "tok-123456789", "sk_live_abcdef", "sessionsecret99", JWT, "s3cr3t-q"]


def leaky_record() -> dict[str, Any]:
    return http_record(
        "outcome",
        at=1.8e9,
        request_id="r1",
        method="POST",
        host="acme.example",
        path="/login",
        query="next=%2F&access_token=s3cr3t-q&x=1",
        user_agent=f"curl with Bearer {SECRETS[1]}",
        actor=Person("sam", kind="staff"),
        status=200,
        request_headers=[
            ("Authorization", f"Bearer {SECRETS[1]}"),
            ("Cookie", f"sid={SECRETS[3]}; theme=dark"),
            ("X-Api-Key", SECRETS[2]),
            ("X-Tenant-Secret", "tenant-xyz-1"),
            ("Accept", "application/json"),
        ],
        response_headers=[("Set-Cookie", f"sid={SECRETS[3]}; Path=/; HttpOnly")],
        request_body=BodyCapture(
            json.dumps(
                {
                    "user": "bob",
                    "Password": SECRETS[0],
                    "nested": {"api-key": SECRETS[2]},
                    "list": [{"client_secret": SECRETS[2]}],
                    "note": f"token {JWT}",
                }
            ).encode(),
            "application/json; charset=utf-8",
            200,
        ),
        response_body=BodyCapture(
            f"password={SECRETS[0]}&name=bob".encode(), "application/x-www-form-urlencoded", 30
        ),
    )


def test_no_denylisted_value_survives_anywhere() -> None:
    redactor = Redactor(b"r" * 32, "r1", headers={"x-tenant-secret"})
    clean = redactor.scrub(leaky_record())
    stored = encode_body(clean)
    for secret in [*SECRETS, "tenant-xyz-1"]:
        assert secret.encode() not in stored, secret
    assert find_plaintext_secrets(clean, redactor.denylist) == []
    listed = {r["field"] for r in clean["gateway"]["redactions"]}
    assert {
        "http.request.headers.authorization",
        "http.request.headers.cookie",
        "http.request.headers.x-api-key",
        "http.request.headers.x-tenant-secret",
        "http.response.headers.set-cookie",
        "url.query:access_token",
        "http.request.body.content.Password",
        "http.response.body.content:password",
        "user_agent.original",
    } <= listed
    # What is not secret is kept as it was.
    assert ["Accept", "application/json"] in clean["http"]["request"]["headers"]
    assert "theme=[redacted" in str(clean)
    assert "Path=/; HttpOnly" in str(clean)
    assert clean["url"]["query"].startswith("next=%2F&access_token=[redacted:")


def test_equal_secrets_correlate_and_keys_separate() -> None:
    one, two = Redactor(b"a" * 32, "a"), Redactor(b"b" * 32, "b")
    assert one.hash("x") == one.hash("x")
    assert one.hash("x") != one.hash("y")
    assert one.hash("x").split(":")[-1] != two.hash("x").split(":")[-1]
    assert MARKER.fullmatch(one.hash("x"))


def test_scrub_leaves_the_input_alone_and_is_idempotent() -> None:
    redactor = Redactor(b"r" * 32)
    record = leaky_record()
    before = json.dumps(record, sort_keys=True)
    once = redactor.scrub(record)
    assert json.dumps(record, sort_keys=True) == before
    twice = redactor.scrub(once)
    assert twice["http"] == once["http"]
    assert twice["url"] == once["url"]


def test_truncated_json_body_is_still_redacted() -> None:
    cut = b'{"a": 1, "password": "hunter2-pw", "token": "abc'
    record = bare_http_record(
        "attempt",
        method="POST",
        request_body=BodyCapture(cut, "application/json", 4000),
    )
    clean = Redactor(b"r" * 32).scrub(record)
    assert b"hunter2" not in encode_body(clean)
    assert b'"abc' not in encode_body(clean)
    assert clean["http"]["request"]["body"]["truncated"] is True


def test_a_body_cut_inside_a_character_is_still_text_and_redacted() -> None:
    full = '{"password": "hunter2-pw", "name": "Zoë"}'.encode()
    cut = full[: full.index("ë".encode()) + 1]  # the cap falls inside the two-byte "ë"
    record = bare_http_record(
        "attempt", method="POST", request_body=BodyCapture(cut, "application/json", len(full))
    )
    stored = Redactor(b"r" * 32).scrub_encoded(record, encode_body)
    body = msgpack.unpackb(stored)["http"]["request"]["body"]
    assert "encoding" not in body
    assert body["content"].endswith('"name": "Zo')
    assert b"hunter2" not in stored
    assert find_plaintext_secrets(msgpack.unpackb(stored)) == []


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("application/json", b'{"password": "hunter2-pw", "n": "\xff"}'),
        ("application/x-www-form-urlencoded", b"password=hunter2-pw&n=%C3\xc3"),
        ("text/plain; charset=latin-1", b'"password":"hunter2-pw" caf\xe9'),
    ],
)
def test_a_text_body_with_a_stray_byte_is_still_redacted(content_type: str, data: bytes) -> None:
    record = bare_http_record(
        "attempt", method="POST", request_body=BodyCapture(data, content_type, len(data))
    )
    stored = Redactor(b"r" * 32).scrub_encoded(record, encode_body)
    body = msgpack.unpackb(stored)["http"]["request"]["body"]
    assert body["encoding"] == "utf-8-replaced"
    assert "\ufffd" in body["content"]
    assert b"hunter2" not in stored
    assert find_plaintext_secrets(msgpack.unpackb(stored)) == []


def test_event_details_are_redacted() -> None:
    record = event_record(
        "enrolment.created",
        at=1.0,
        category="account",
        details={"enrolment_token": "tok-zzz", "count": 2, "verified": True},
    )
    clean = Redactor(b"r" * 32).scrub(record)
    assert "tok-zzz" not in str(clean)
    assert clean["gateway"]["details"]["count"] == 2
    assert clean["gateway"]["details"]["verified"] is True


def test_binary_bodies_are_base64_and_not_parsed() -> None:
    record = bare_http_record(
        "attempt",
        method="POST",
        request_body=BodyCapture(b"\xff\xfe\x00password=1", "application/octet-stream", 12),
    )
    clean = Redactor(b"r" * 32).scrub(record)
    assert clean["http"]["request"]["body"]["encoding"] == "base64"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("new-password", True),
        ("password_confirm", True),
        ("csrf_token", True),
        ("API_KEY", True),
        ("tokens", False),
        ("passwordless", False),
        ("name", False),
    ],
)
def test_denylist_matching(name: str, secret: bool) -> None:
    assert Denylist().field(name) is secret


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Redactor(b"short")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["password", "token", "a", "b", "api_key"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(doc=json_values, secret=st.text(min_size=6, max_size=16, alphabet="abcdefXYZ0123"))
def test_hostile_json_bodies_never_leak_the_secret(doc: Any, secret: str) -> None:
    wrapped = {"keep": doc, "password": secret, "deep": [{"token": secret}]}
    record = bare_http_record(
        "attempt",
        method="POST",
        request_body=BodyCapture(json.dumps(wrapped).encode(), "application/json", 10),
    )
    clean = Redactor(b"r" * 32).scrub(record)
    content = json.loads(clean["http"]["request"]["body"]["content"])
    assert MARKER.fullmatch(content["password"])
    assert MARKER.fullmatch(content["deep"][0]["token"])
    # The secret survives only where the document itself holds it under a harmless name.
    assert json.dumps(content).count(secret) <= json.dumps(doc).count(secret)
    assert find_plaintext_secrets(clean) == []
    msgpack.packb(clean)


def _both(redactor: Redactor, record: Any) -> tuple[Any, Any]:
    """The stored body by the writer's path and by the full walk, decoded."""
    fast = msgpack.unpackb(redactor.scrub_encoded(record, encode_body))
    full = msgpack.unpackb(encode_body(redactor.scrub(record)))
    return fast, full


def test_the_writers_path_redacts_what_the_walk_redacts() -> None:
    redactor = Redactor(b"r" * 32, "r1", headers={"x-tenant-secret"})
    fast, full = _both(redactor, leaky_record())
    assert find_plaintext_secrets(fast, redactor.denylist) == []
    for secret in [*SECRETS, "tenant-xyz-1"]:
        assert secret not in json.dumps(fast), secret
    assert fast["http"] == full["http"]
    assert fast["url"] == full["url"]
    assert fast["user_agent"] == full["user_agent"]


@pytest.mark.parametrize(
    "where",
    [
        "method",
        "path",
        "query",
        "path_and_query",
        "user_agent",
        "header_name",
        "header_value",
        "mime",
        "text_body",
        "actor_name",
    ],
)
def test_tokens_in_any_client_supplied_field_of_an_http_record_are_redacted(where: str) -> None:
    fields: dict[str, Any] = {
        "method": "GET",
        "path": "/",
        "query": "",
        "user_agent": None,
        "request_headers": [("Accept", "*/*")],
        "request_body": None,
    }
    if where == "method":
        fields["method"] = JWT
    elif where == "path":
        fields["path"] = f"/reset/{JWT}"
    elif where == "query":
        fields["query"] = f"next={JWT}"
    elif where == "path_and_query":
        fields["path"] = f"/reset/{JWT}"
        fields["query"] = "auth=Bearer%20x&t=token abcdefgh12345"
    elif where == "user_agent":
        fields["user_agent"] = "client Bearer abcdefgh12345"
    elif where == "header_name":
        fields["request_headers"] = [(JWT, "x")]
    elif where == "header_value":
        fields["request_headers"] = [("X-Gateway-Assertion", JWT)]
    elif where == "mime":
        fields["request_body"] = BodyCapture(b"hi", f"text/plain; x={JWT}", 2)
    elif where == "text_body":
        fields["request_body"] = BodyCapture(f"see {JWT} here".encode(), "text/plain", 30)
    actor = Person(
        "sam", kind="staff", name="Token abcdefgh12345" if where == "actor_name" else "S"
    )
    record = http_record(
        "outcome", at=1.0, request_id="r", host="h", status=200, actor=actor, **fields
    )
    original = json.dumps(record, sort_keys=True)
    redactor = Redactor(b"r" * 32)
    fast, full = _both(redactor, record)
    assert JWT not in json.dumps(fast)
    assert "abcdefgh12345" not in json.dumps(fast)
    assert find_plaintext_secrets(fast) == []
    assert fast["gateway"]["redactions"], "each redaction is listed"
    assert json.dumps(record, sort_keys=True) == original  # the input is left alone
    assert fast["url"] == full["url"]


def test_a_plain_dict_shaped_like_an_http_record_gets_the_full_walk() -> None:
    record = dict(bare_http_record("attempt"))
    record["user"] = {"id": "sam", "api-key": "sk_live_abcdef", "note": f"Bearer {SECRETS[1]}"}
    redactor = Redactor(b"r" * 32)
    fast, full = _both(redactor, record)
    assert fast == full
    assert "sk_live_abcdef" not in json.dumps(fast)
    assert SECRETS[1] not in json.dumps(fast)
    assert find_plaintext_secrets(fast) == []


def test_an_http_record_with_foreign_keys_gets_the_full_walk() -> None:
    record = bare_http_record("attempt")
    record["extra"] = {"password": "hunter2-pw"}
    fast, full = _both(Redactor(b"r" * 32), record)
    assert fast == full
    assert "hunter2-pw" not in json.dumps(fast)


def test_event_records_take_the_walk_only_when_it_changes_something() -> None:
    redactor = Redactor(b"r" * 32)
    plain = event_record("gateway.start", at=1.0, category="gateway", details={"n": 1})
    secret = event_record("login.failed", at=1.0, category="account", details={"otp": "123456"})
    for record in (plain, secret):
        fast, full = _both(redactor, record)
        assert fast == full
    assert "123456" not in json.dumps(_both(redactor, secret)[0])


@settings(max_examples=100, deadline=None)
@given(doc=json_values, text=st.text(max_size=40))
def test_the_writers_path_equals_the_walk_on_hostile_bodies(doc: Any, text: str) -> None:
    record = bare_http_record(
        method="POST",
        path="/" + text.replace("\x00", ""),
        status=200,
        request_headers=[("X-Note", text)],
        request_body=BodyCapture(json.dumps(doc).encode(), "application/json", 10),
        response_body=BodyCapture(text.encode("utf-8", "replace"), "text/plain", 10),
    )
    redactor = Redactor(b"r" * 32)
    fast, full = _both(redactor, record)
    assert fast == full
    assert find_plaintext_secrets(fast) == []


def _body_record(content: str, content_type: str) -> dict[str, Any]:
    return http_record(
        "outcome",
        at=1.8e9,
        request_id="r-label",
        method="POST",
        host="acme.example",
        path="/save",
        request_body=BodyCapture(content.encode(), content_type, len(content)),
    )


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ('{"user":"bob","password":"hunter2-pw"}', "application/x-www-form-urlencoded"),
        ('{"user":"bob","password":"hunter2-pw"}', "text/plain"),
        ("user=bob&password=hunter2-pw", "text/plain"),
        ("user=bob&password=hunter2-pw", "application/json"),
        ("user=bob&password=hunter2-pw", "application/octet-stream; charset=utf-8"),
        ("user=bob&password=hunter2-pw", ""),
    ],
)
def test_a_body_is_redacted_whatever_its_label_says(content: str, content_type: str) -> None:
    redactor = Redactor(b"r" * 32, "r1")
    clean = redactor.scrub(_body_record(content, content_type))
    assert b"hunter2-pw" not in encode_body(clean)
    assert find_plaintext_secrets(clean, redactor.denylist) == []
    assert [r["field"] for r in clean["gateway"]["redactions"]] == [
        "http.request.body.content:password"
    ]


def test_the_detector_finds_form_pairs_in_a_mislabelled_body() -> None:
    leaked = _body_record("user=bob&password=hunter2-pw", "text/plain")
    assert find_plaintext_secrets(leaked) != []


def test_form_like_text_inside_a_json_document_stays_valid_json() -> None:
    redactor = Redactor(b"r" * 32, "r1")
    doc = {"search": "a&token=abc", "page": 2}
    clean = redactor.scrub(_body_record(json.dumps(doc), "application/json"))
    stored = json.loads(clean["http"]["request"]["body"]["content"])
    # Still the same JSON document; the form pair in the string is redacted as form pairs are.
    assert stored == {"search": f"a&token={redactor.hash('abc')}", "page": 2}
    assert find_plaintext_secrets(clean, redactor.denylist) == []
    assert find_plaintext_secrets(_body_record(json.dumps(doc), "application/json")) == [
        "http.request.body.content:token"
    ]


# Bodies whose secrets sit where a plain JSON walk or form split does not look: form pairs
# and JSON text inside JSON string values, numbers in JSON-looking text, escaped names in
# a truncated document, multipart form fields (whole and cut at the capture cap).
HIDDEN_SECRETS = [
    ("text/html", b'<a href="https://app.example/next?token=hunter2-pw">next</a>'),
    ("application/xml", b"<login><user>bob</user><password>hunter2-pw</password></login>"),
    (
        "text/xml",
        b'<s:Envelope><wsse:Password Type="x">hunter2-pw</wsse:Password></s:Envelope>',
    ),
    ("application/soap+xml", b"<api_key><![CDATA[hunter2-pw]]></api_key>"),
    ("application/xml", b"<a><token>hunter2-pw"),
    ("application/json", b'{"xml": "<password>hunter2-pw</password>"}'),
    ("application/json", b'{"q": "a&password=hunter2-pw&b=1"}'),
    ("application/json", b'{"url": "https://x.example/cb?state=1&access_token=hunter2-pw"}'),
    ("application/json", b'{"data": "{\\"password\\":\\"hunter2-pw\\"}"}'),
    ("application/json", b'{"deep": [{"form": "otp=hunter2-pw"}]}'),
    ("text/plain", b'{"otp": 4711815, "cvv": -123.5e2}'),
    ("application/json", b'{"a": 1, "card_number": 4111111111111111'),
    ("application/json", b'{"a": 1, "pass\\u0077ord": "hunter2-pw'),
    ("text/plain", b'{"\\u0074oken": "hunter2-pw"}'),
    (
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="password"\r\n\r\nhunter2-pw\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="user"\r\n\r\nbob\r\n--XX--\r\n',
    ),
    (
        "multipart/form-data; boundary=XX",
        b'--XX\r\ncontent-disposition: form-data; name="api_key"\r\nContent-Type: text/plain'
        b"\r\n\r\nhunter2-pw",
    ),
    (
        "text/x-anything; x=1",
        b'--b\nContent-Disposition: form-data; name="secret"\n\nhunter2-pw\n--b--',
    ),
]


@pytest.mark.parametrize(("content_type", "data"), HIDDEN_SECRETS)
def test_secrets_hidden_inside_bodies_are_redacted_and_verify_agrees(
    content_type: str, data: bytes
) -> None:
    record = bare_http_record(
        "attempt", method="POST", request_body=BodyCapture(data, content_type, len(data) + 9)
    )
    redactor = Redactor(b"r" * 32)
    stored = redactor.scrub_encoded(record, encode_body)
    assert stored == encode_body(redactor.scrub(record))
    for secret in (b"hunter2", b"4711815", b"12350", b"123.5", b"4111111111111111"):
        assert secret not in stored
    body = msgpack.unpackb(stored)
    assert body["gateway"]["redactions"]
    assert find_plaintext_secrets(body) == []
    # ... and verify finds every one of them when left in plain text.
    plain = bare_http_record(
        "attempt", method="POST", request_body=BodyCapture(data, content_type, len(data) + 9)
    )
    assert find_plaintext_secrets(msgpack.unpackb(encode_body(plain))) != []


def test_hidden_secret_redaction_is_idempotent_and_keeps_other_text() -> None:
    data = (
        b'--XX\r\nContent-Disposition: form-data; name="password"\r\n\r\nhunter2-pw\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="note"\r\n\r\nkeep me\r\n--XX--\r\n'
    )
    record = bare_http_record(
        "attempt",
        method="POST",
        request_body=BodyCapture(data, "multipart/form-data; boundary=XX", len(data)),
    )
    redactor = Redactor(b"r" * 32)
    once = redactor.scrub(record)
    content = once["http"]["request"]["body"]["content"]
    assert "keep me" in content
    assert content.count("--XX") == 3
    assert redactor.scrub(once)["http"] == once["http"]


@pytest.mark.parametrize("depth", [400, 900, 5_000, 100_000])
def test_a_deeply_nested_json_body_is_still_recorded_and_redacted(depth: int) -> None:
    # A hostile client must not make its request's record fail (the outcome would be lost).
    doc = "[" * depth + '{"password": "hunter2-pw"}' + "]" * depth
    record = bare_http_record(
        "outcome",
        method="POST",
        request_body=BodyCapture(doc.encode(), "application/json", len(doc)),
    )
    redactor = Redactor(b"r" * 32)
    stored = redactor.scrub_encoded(record, encode_body)
    assert b"hunter2" not in stored
    body = msgpack.unpackb(stored)
    assert body["http"]["request"]["body"]["content"].startswith("[[[")
    assert find_plaintext_secrets(body) == []
    leaked = msgpack.unpackb(encode_body(record))
    assert find_plaintext_secrets(leaked) != []


@pytest.mark.parametrize(
    "text",
    [
        'content-disposition: form-data; name="password"\n' * 1500,
        "content-disposition: " + '; name="a"' * 8000,
        '--b\r\nContent-Disposition: form-data; name="token"\r\n\r\n' + "x\r\n" * 30_000,
        "<password><![CDATA[" * 10_000,
        "<a " * 30_000,
        "<password>x" * 10_000,
    ],
)
def test_hostile_multipart_like_text_is_redacted_in_linear_time(text: str) -> None:
    record = bare_http_record(
        "attempt", method="POST", request_body=BodyCapture(text.encode(), "text/plain", len(text))
    )
    # CPU time of this process: other processes' load on the machine does not count.
    started = time.process_time()
    stored = Redactor(b"r" * 32).scrub_encoded(record, encode_body)
    find_plaintext_secrets(msgpack.unpackb(stored))
    assert time.process_time() - started < 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Auth-Token", "hunter2-pw"),
        ("Private-Token", "hunter2-pw"),
        ("X-Amz-Security-Token", "hunter2-pw"),
        ("x_api_key", "hunter2-pw"),
        ("X-CLIENT-SECRET", "hunter2-pw"),
        ("Cookie", "hunter2-pw"),  # a cookie without a name is still a cookie's value
        ("Cookie", "a=1; hunter2-pw"),
        ("Set-Cookie", "hunter2-pw; Path=/; HttpOnly"),
        # URLs in headers carry secrets in their query or fragment (OAuth redirects).
        ("Location", "/login?token=hunter2-pw"),
        ("Referer", "https://app.example/cb?state=1#access_token=hunter2-pw&x=1"),
        ("Link", "<https://app.example/?api_key=hunter2-pw>; rel=next"),
    ],
)
def test_secret_headers_in_every_variant_are_redacted(name: str, value: str) -> None:
    record = bare_http_record("outcome", request_headers=[(name, value)])
    redactor = Redactor(b"r" * 32)
    stored = redactor.scrub_encoded(record, encode_body)
    assert stored == encode_body(redactor.scrub(record))
    assert b"hunter2" not in stored
    assert find_plaintext_secrets(msgpack.unpackb(stored)) == []
    leaked = msgpack.unpackb(encode_body(record))
    assert find_plaintext_secrets(leaked) != []


@pytest.mark.parametrize(
    "query",
    [
        "user[password]=hunter2-pw&commit=1",
        "password[]=hunter2-pw",
        "user.api_key=hunter2-pw",
        "a=1&session%5Btoken%5D=hunter2-pw",
        "a=1;password=hunter2-pw",  # `;` separates pairs for some servers
    ],
)
def test_nested_form_names_are_redacted(query: str) -> None:
    record = bare_http_record(
        "attempt",
        method="POST",
        query=query,
        request_body=BodyCapture(query.encode(), "application/x-www-form-urlencoded", 40),
    )
    redactor = Redactor(b"r" * 32)
    stored = redactor.scrub_encoded(record, encode_body)
    assert b"hunter2" not in stored
    assert find_plaintext_secrets(msgpack.unpackb(stored)) == []
    assert find_plaintext_secrets(msgpack.unpackb(encode_body(record))) != []
