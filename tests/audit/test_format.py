"""Records, frames and keys: the format, its validation and its hostile inputs."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest

from audit import frame as frame_module
from audit.errors import FrameError, RecordError, SigningKeyError, UnknownFrameVersion
from audit.frame import (
    FORMAT_VERSION,
    GENESIS_PREV,
    Frame,
    FrameSealer,
    body_packer,
    decode_frame,
    encode_body,
    frame_hash_input,
)
from audit.keys import ENV_SIGNING_KEY, KeyDirectory, Keyring, SigningKey
from audit.record import BodyCapture, Person, RecordKind, event_record, http_record
from audit.segment import MAGIC, read_segment
from tests.audit.conftest import bare_http_record


def test_http_record_names_both_identities_in_ecs_fields() -> None:
    body = http_record(
        "outcome",
        at=1_800_000_000.5,
        request_id="r1",
        method="GET",
        host="acme.example",
        path="/a",
        query="b=1",
        client_ip="192.0.2.1",
        user_agent="UA",
        actor=Person("sam", kind="staff", email="sam@v.example", name="Sam"),
        effective=Person("bob", kind="member", org="acme"),
        org="acme",
        grant_id="g1",
        scope="read",
        route="acme",
        decision="allow",
        reason="rule",
        rule="f.yaml:3",
        status=201,
        request_bytes=0,
        response_bytes=10,
        started_at=1_800_000_000.0,
        timings={"wait": 3, "total": 500.0},
    )
    assert body["record"] == RecordKind.HTTP_OUTCOME
    assert body["@timestamp"] == "2027-01-15T08:00:00.500Z"
    assert body["user"]["email"] == "sam@v.example"
    assert body["user"]["effective"] == {"id": "bob", "domain": "acme", "roles": ["member"]}
    assert body["http"]["response"]["status_code"] == 201
    assert body["url"] == {
        "scheme": "https",
        "domain": "acme.example",
        "path": "/a",
        "query": "b=1",
    }
    assert body["event"]["duration"] == 500_000_000
    assert body["gateway"]["grant"] == {"id": "g1", "scope": "read"}
    assert body["gateway"]["decision"] == {"result": "allow", "reason": "rule", "rule": "f.yaml:3"}
    assert body["source"]["ip"] == "192.0.2.1"


def test_an_outcome_with_a_denial_code_is_a_denial_record() -> None:
    body = bare_http_record(
        error="no_grant",
        reason="no live grant",
        status=403,
        decision="deny",
    )
    assert body["record"] == RecordKind.DENIAL
    assert body["error"] == {"code": "no_grant", "message": "no live grant"}
    assert body["event"]["outcome"] == "failure"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phase": "during"}, "phase"),
        ({"status": 42}, "status_code"),
        ({"status": True}, "status_code"),
        ({"decision": "maybe"}, "decision"),
        ({"timings": {"dns_lookup": 1.0}}, "unknown"),
        ({"timings": {"wait": -1.0}}, "milliseconds"),
        ({"timings": {"wait": float("nan")}}, "milliseconds"),
        ({"request_bytes": -5}, "non-negative"),
        ({"path": "/" + "a" * 9000}, "at most"),
        ({"method": b"GET"}, "expected a string"),
    ],
)
def test_bad_record_fields_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        bare_http_record(**kwargs)


def test_event_record_validation() -> None:
    body = event_record(
        "login.failed",
        at=1.0,
        category="account",
        outcome="failure",
        actor=Person("sam"),
        reason="bad password",
    )
    assert body["record"] == RecordKind.ACCOUNT
    assert body["event"]["reason"] == "bad password"
    with pytest.raises(RecordError, match="category"):
        event_record("x", at=1.0, category="other")
    with pytest.raises(RecordError, match="outcome"):
        event_record("x", at=1.0, category="gateway", outcome="meh")


def test_body_capture_marks_truncation_and_binary() -> None:
    assert BodyCapture(b"abc", "text/plain", 10).ecs() == {
        "bytes": 10,
        "mime_type": "text/plain",
        "content": "abc",
        "truncated": True,
    }
    assert BodyCapture(b"\xff", None, 1).ecs()["encoding"] == "base64"


def test_frame_roundtrip_and_hash_covers_every_field() -> None:
    body = encode_body({"record": "x"})
    frame = Frame.seal("s-1", 0, GENESIS_PREV, body)
    assert decode_frame(frame.encode()) == frame
    assert frame.hash_ok()
    for changed in (
        Frame(frame.version, "s-2", 0, GENESIS_PREV, body, frame.h),
        Frame(frame.version, "s-1", 1, GENESIS_PREV, body, frame.h),
        Frame(frame.version, "s-1", 0, b"\x01" * 32, body, frame.h),
        Frame(frame.version, "s-1", 0, GENESIS_PREV, body + b"\x00", frame.h),
    ):
        assert not changed.hash_ok()
    # Length prefixes: moving bytes between stream and body cannot keep the hash input.
    assert frame_hash_input(1, "ab", 0, GENESIS_PREV, b"c") != frame_hash_input(
        1, "a", 0, GENESIS_PREV, b"bc"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([1, "s", 0, bytes(32), b"", bytes(32), "extra"]),
        msgpack.packb([1, "bad stream id!", 0, bytes(32), b"", bytes(32)]),
        msgpack.packb([1, "s", -1, bytes(32), b"", bytes(32)]),
        msgpack.packb([1, "s", 0, bytes(31), b"", bytes(32)]),
        msgpack.packb([1, "s", 0, bytes(32), "text", bytes(32)]),
        msgpack.packb([True, "s", 0, bytes(32), b"", bytes(32)]),
        b"\x00" * (frame_module.MAX_FRAME_BYTES + 1),
    ],
)
def test_malformed_frames_are_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(data)


def test_unknown_versions_are_refused_and_old_ones_converted() -> None:
    future = msgpack.packb([FORMAT_VERSION + 1, "s", 0, bytes(32), b"", bytes(32)])
    with pytest.raises(UnknownFrameVersion):
        decode_frame(future)
    # A converter lifts an old version's body; the hash still covers the stored bytes.
    old = FORMAT_VERSION - 1 if FORMAT_VERSION > 1 else 0
    frame_module.CONVERTERS[old] = lambda body: {**body, "record": "upgraded"}
    known = frame_module.KNOWN_VERSIONS
    frame_module.KNOWN_VERSIONS = known | {old}
    try:
        body = encode_body({"record": "legacy"})
        prev = GENESIS_PREV
        h = frame_module.frame_hash(old, "s", 0, prev, body)
        frame = decode_frame(msgpack.packb([old, "s", 0, prev, body, h]))
        assert frame.hash_ok()
        assert frame.decode_body() == {"record": "upgraded"}
    finally:
        del frame_module.CONVERTERS[old]
        frame_module.KNOWN_VERSIONS = known


def test_unstorable_bodies() -> None:
    with pytest.raises(RecordError):
        encode_body({"x": {1, 2}})
    with pytest.raises(RecordError, match="at most"):
        encode_body({"x": b"a" * frame_module.MAX_BODY_BYTES})


def test_key_rotation_closes_windows_and_keeps_private_keys_private(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    first = keys.ensure(now=100.0)
    assert keys.ensure(now=150.0).key_id == first.key_id
    second = keys.rotate(now=200.0)
    ring = keys.keyring()
    old, new = ring.get(first.key_id), ring.get(second.key_id)
    assert old is not None
    assert new is not None
    assert (old.not_before, old.not_after) == (100.0, 200.0)
    assert (new.not_before, new.not_after) == (200.0, None)
    assert old.valid_at(150.0)
    assert not old.valid_at(200.0)
    assert new.valid_at(200.0)
    assert keys.active().key_id == second.key_id
    assert not (keys.private_dir / f"{first.key_id}.key").exists()
    mode = stat.S_IMODE((keys.private_dir / f"{second.key_id}.key").stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o700
    assert Keyring.load(keys.keyring_path) == ring


def test_a_readable_private_key_is_refused(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    key = keys.ensure(now=1.0)
    os.chmod(keys.private_dir / f"{key.key_id}.key", 0o644)
    with pytest.raises(SigningKeyError, match="0600"):
        keys.active()


def test_signing_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey.generate("env-key")
    monkeypatch.setenv(ENV_SIGNING_KEY, "env-key:" + base64.b64encode(key.seed()).decode())
    loaded = KeyDirectory(tmp_path / "keys").ensure(now=1.0)
    assert loaded.key_id == "env-key"
    assert loaded.public_bytes() == key.public_bytes()
    monkeypatch.setenv(ENV_SIGNING_KEY, "no-colon")
    with pytest.raises(SigningKeyError, match="expected"):
        SigningKey.from_env()
    monkeypatch.setenv(ENV_SIGNING_KEY, "k:AAAA")
    with pytest.raises(SigningKeyError, match="bytes"):
        SigningKey.from_env()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "expected"),
        ('{"keys": [{"key_id": "a"}]}', "exactly"),
        (
            '{"keys": [{"key_id": "a b", "public_key": "", "not_before": 0, "not_after": null}]}',
            "bad key id",
        ),
        (
            '{"keys": [{"key_id": "a", "public_key": "!!", "not_before": 0, "not_after": null}]}',
            "base64",
        ),
        (
            '{"keys": [{"key_id": "a", "public_key": "AAAA", "not_before": 0, "not_after": null}]}',
            "bytes",
        ),
        (
            '{"keys": [{"key_id": "a", "public_key": "AAAA", "not_before": "x", '
            '"not_after": null}]}',
            "not_before",
        ),
    ],
)
def test_bad_keyrings_are_refused(text: str, message: str) -> None:
    with pytest.raises(SigningKeyError, match=message):
        Keyring.parse(text, "keyring.json")


def test_oversized_keyring_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text('{"keys": []}' + " " * (2 << 20))
    with pytest.raises(SigningKeyError, match="larger than"):
        Keyring.load(path)
    with pytest.raises(SigningKeyError, match="cannot read"):
        Keyring.load(tmp_path / "absent.json")


def test_segment_with_a_hostile_record_length(tmp_path: Path) -> None:
    path = tmp_path / "x.seg"
    path.write_bytes(MAGIC + (0xFFFFFFFF).to_bytes(4, "big") + b"x" * 10)
    items = list(read_segment(path))
    assert [(i.data, i.error) for i in items] == [(None, "bad record length 4294967295")]
    path.write_bytes(MAGIC + (0).to_bytes(4, "big"))
    assert next(read_segment(path)).error == "bad record length 0"


@pytest.mark.parametrize(
    ("seq", "size"),
    [
        (0, 0),
        (1, 200),
        (127, 300),
        (128, 70_000),
        (255, 10),
        (256, 10),
        (65_535, 10),
        (65_536, 10),
        ((1 << 32) - 1, 10),
        (1 << 32, 10),
        (1 << 40, 10),
    ],
)
def test_the_writers_sealer_makes_the_frames_frame_seal_makes(seq: int, size: int) -> None:
    body = encode_body({"record": "http.attempt", "n": seq, "pad": "x" * size})
    prev = bytes(range(32))
    stream = "20261129T044000Z-5f0c9a1e27b4d3c8"
    h, data = FrameSealer(stream).seal(seq, prev, body)
    frame = Frame.seal(stream, seq, prev, body)
    assert h == frame.h
    assert data == frame.encode()
    assert decode_frame(data).hash_ok()


def test_the_reused_body_packer_lets_a_grown_buffer_go() -> None:
    first = body_packer()
    assert encode_body({"n": 1}) == msgpack.packb({"n": 1}, use_bin_type=True)
    assert body_packer() is first  # kept: packing left it empty
    with pytest.raises(RecordError):
        encode_body({"bad": object()})
    after_failure = body_packer()
    assert after_failure is not first  # dropped after a failure
    assert encode_body({"n": 2}) == msgpack.packb({"n": 2}, use_bin_type=True)
    encode_body({"big": "x" * 300_000})
    assert body_packer() is not after_failure  # dropped after a large body
