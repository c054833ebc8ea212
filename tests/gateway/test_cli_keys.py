"""Operators rotate both key kinds from the CLI, finding them through the gateway config:
`gateway assertion rotate` (identity assertions, ES256) and `gateway audit keys rotate`
(audit checkpoints, Ed25519). Old keys stay published; new signatures use the new key."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from audit.keys import KeyDirectory
from gateway.assertion import ENV_KEYS, load_signer, verify
from gateway.cli import main
from gateway.identity import ActingGrant, Principal, PrincipalKind
from policies.model import Scope

ISSUER = "https://gateway.test:8443"
AUDIENCE = "https://acme.test:8443"
SAM = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""console_url: {ISSUER}
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
"""
    )
    return path


def _grant(now: float) -> ActingGrant:
    return ActingGrant("g-1", "acme", "bob", SAM, Scope.READ, now - 60, now + 3600)


def _kids(jwks: dict[str, object]) -> list[str]:
    keys = jwks["keys"]
    assert isinstance(keys, list)
    return [str(k["kid"]) for k in keys]


def test_assertion_rotate_publishes_old_and_new_and_signs_with_new(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "data" / "keys"
    now = time.time()
    before = load_signer(directory, issuer=ISSUER)
    old_kid = before.current.kid
    old_token = before.sign(_grant(now), AUDIENCE, now)
    assert main(["assertion", "rotate", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    after = load_signer(directory, issuer=ISSUER)
    new_kid = after.current.kid
    assert new_kid != old_kid
    assert f"new assertion signing key {new_kid}" in out
    assert _kids(after.jwks()) == [old_kid, new_kid]
    token = after.sign(_grant(now), AUDIENCE, now)
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    # Both verify against the published set: the old token keeps working to its end.
    for signed in (token, old_token):
        claims = verify(signed, after.jwks(), audience=AUDIENCE, issuer=ISSUER, now=now)
        assert claims["sub"] == "bob"
    assert main(["assertion", "show", "--config", str(config)]) == 0
    assert _kids(json.loads(capsys.readouterr().out)) == [old_kid, new_kid]


def test_assertion_rotate_keeps_only_the_newest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "keys"
    for _ in range(4):
        assert main(["assertion", "rotate", "--dir", str(directory), "--keep", "2"]) == 0
    signer = load_signer(directory, issuer=ISSUER, create=False)
    assert len(_kids(signer.jwks())) == 2
    assert main(["assertion", "rotate", "--dir", str(directory), "--keep", "1"]) == 2
    assert "at least" in capsys.readouterr().err
    assert len(_kids(load_signer(directory, issuer=ISSUER, create=False).jwks())) == 2


def test_assertion_rotate_refuses_when_keys_come_from_the_environment(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(ENV_KEYS, "-----BEGIN PRIVATE KEY-----\n...")
    assert main(["assertion", "rotate", "--config", str(config)]) == 1
    assert ENV_KEYS in capsys.readouterr().err
    assert not (tmp_path / "data" / "keys").exists()


def test_assertion_commands_with_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("console_url: 7\n")
    assert main(["assertion", "rotate", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:1: console_url" in err
    assert "--dir" in err
    assert main(["assertion", "show", "--dir", str(tmp_path / "none")]) == 1
    assert "no assertion signing key" in capsys.readouterr().err


def test_audit_keys_rotate_from_the_config(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = KeyDirectory(tmp_path / "data" / "audit-keys")
    old = directory.ensure(time.time())
    assert main(["audit", "keys", "rotate", "--config", str(config)]) == 0
    assert "new signing key" in capsys.readouterr().out
    ring = directory.keyring()
    assert ring.keys[0].key_id == old.key_id
    assert len(ring.keys) == 2
    new_id = ring.keys[1].key_id
    assert ring.keys[0].not_after is not None
    assert ring.keys[1].not_after is None
    # The writer's key follows the rotation: new checkpoints are signed with the new key.
    assert old.current().key_id == new_id
    assert directory.active().key_id == new_id
    assert main(["audit", "keys", "show", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [k["key_id"] for k in shown["keys"]] == [old.key_id, new_id]
