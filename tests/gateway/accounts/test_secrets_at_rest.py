from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts import Accounts, SecretKeyError
from gateway.accounts.keyfile import secret_key
from gateway.accounts.secretbox import TotpSecretBox


def test_key_file_created_0600_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TEST_KEY", raising=False)
    first = secret_key(tmp_path, "totp", env="GATEWAY_TEST_KEY")
    path = tmp_path / "keys" / "totp.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first) == 32
    assert secret_key(tmp_path, "totp", env="GATEWAY_TEST_KEY") == first


def test_key_readable_by_others_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TEST_KEY", raising=False)
    secret_key(tmp_path, "totp", env="GATEWAY_TEST_KEY")
    os.chmod(tmp_path / "keys" / "totp.key", 0o644)
    with pytest.raises(SecretKeyError, match="0600"):
        secret_key(tmp_path, "totp", env="GATEWAY_TEST_KEY")


@pytest.mark.parametrize("value", ["not base64 !!", "c2hvcnQ", ""])
def test_bad_env_key_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GATEWAY_TEST_KEY", value)
    if value == "":
        # An empty variable counts as unset: the file is used.
        assert len(secret_key(tmp_path, "x", env="GATEWAY_TEST_KEY")) == 32
        return
    with pytest.raises(SecretKeyError):
        secret_key(tmp_path, "x", env="GATEWAY_TEST_KEY")


def test_env_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_KEY", "A" * 43)
    assert secret_key(tmp_path, "x", env="GATEWAY_TEST_KEY") == bytes(32)
    assert not (tmp_path / "keys" / "x.key").exists()


def test_sealed_secret_bound_to_its_account() -> None:
    box = TotpSecretBox(bytes(range(32)))
    sealed = box.seal("JBSWY3DPEHPK3PXP", "staff:sam")
    assert box.open(sealed, "staff:sam") == "JBSWY3DPEHPK3PXP"
    with pytest.raises(SecretKeyError):
        box.open(sealed, "staff:eve")
    with pytest.raises(SecretKeyError):
        TotpSecretBox(bytes(32)).open(sealed, "staff:sam")
    with pytest.raises(SecretKeyError):
        box.open(sealed[:-2] + "AA", "staff:sam")


async def test_redis_holds_no_plain_secret(
    accounts: Accounts, alice: str, redis: aioredis.Redis
) -> None:
    raw = {
        str(k, "utf-8") if isinstance(k, bytes) else k: v if isinstance(v, bytes) else v.encode()
        for k, v in (await redis.hgetall(keys.member("acme", "alice"))).items()
    }
    dump = b" ".join(raw.values())
    assert alice.encode() not in dump
    assert b"alice-password-1" not in dump
    assert raw["password_hash"].startswith(b"scrypt$")
    assert raw["totp_secret"].startswith(b"v1.")
