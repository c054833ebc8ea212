"""Checkpoint signing keys (Ed25519) and the public keyring auditors verify against.

A key directory (0700) holds:

    keyring.json            public: [{key_id, public_key (base64 raw), not_before, not_after}]
    signing/<key_id>.key    private, mode 0600: base64 of the raw 32-byte Ed25519 seed
    active                  the key id the writer signs with

The directory is locked (flock) while a key is made, so that gateway instances sharing it
and starting at once agree on one first key, and no rotation loses another's key from the
keyring.

`keyring.json` is what an auditor needs besides the segment files. Rotation creates a
new key, closes the old key's validity window at the rotation time and opens the new
one's; old private keys are deleted unless kept on purpose, public keys stay forever.

The signing key may instead come from the environment, for deployments without a
writable data directory: GATEWAY_AUDIT_SIGNING_KEY="<key_id>:<base64 seed>".

    keys = KeyDirectory(data_dir / "audit-keys")
    signer = keys.ensure(now=clock.now())          # first key on first start
    keys.rotate(now=clock.now())                   # `gateway audit keys rotate`
    ring = Keyring.load(Path("keyring.json"))      # on the auditor's laptop
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from audit.dirlock import locked_directory
from audit.errors import SigningKeyError

ENV_SIGNING_KEY = "GATEWAY_AUDIT_SIGNING_KEY"
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_KEYRING_BYTES = 1 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SigningKeyError(f"{what}: not base64: {exc}") from exc
    if len(raw) != length:
        raise SigningKeyError(f"{what}: {len(raw)} bytes, expected {length}")
    return raw


class SigningKey:
    """A private Ed25519 key with its id; signs checkpoints.

    A key loaded from a KeyDirectory follows rotation: `current()` returns the directory's
    active key once `gateway audit keys rotate` changed it, so a running writer signs its
    next checkpoint with the new key (the old key's window ended at the rotation).
    """

    def __init__(self, key_id: str, private: Ed25519PrivateKey) -> None:
        if not KEY_ID.fullmatch(key_id):
            raise SigningKeyError(f"bad key id {key_id!r}: expected [A-Za-z0-9._-]{{1,64}}")
        self.key_id = key_id
        self._private = private
        self._directory: KeyDirectory | None = None
        self._stamp: tuple[int, int] | None = None
        self._latest: SigningKey = self

    def current(self) -> SigningKey:
        """The key to sign with now: this one, or the rotated-in successor."""
        directory = self._directory
        if directory is None:
            return self
        stamp = directory.active_stamp()
        if stamp != self._stamp:
            try:
                self._latest = directory.active()
                self._stamp = stamp
            except SigningKeyError:
                pass  # a rotation half-way through: keep signing with the last good key
        return self._latest

    @classmethod
    def generate(cls, key_id: str | None = None) -> SigningKey:
        return cls(key_id or new_key_id(), Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, key_id: str, seed: bytes) -> SigningKey:
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SigningKey | None:
        """The key named by GATEWAY_AUDIT_SIGNING_KEY, or None when it is unset."""
        value = (os.environ if environ is None else environ).get(ENV_SIGNING_KEY)
        if not value:
            return None
        key_id, sep, seed = value.partition(":")
        if not sep:
            raise SigningKeyError(f"{ENV_SIGNING_KEY}: expected '<key_id>:<base64 seed>'")
        return cls.from_seed(key_id, _unb64(seed, ENV_SIGNING_KEY, 32))

    def seed(self) -> bytes:
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def new_key_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


@dataclass(frozen=True)
class PublicKey:
    """One keyring entry: a public key valid for checkpoints made in [not_before, not_after)."""

    key_id: str
    public_key: bytes
    not_before: float
    not_after: float | None = None  # None: still the active key

    def valid_at(self, when: float) -> bool:
        return self.not_before <= when and (self.not_after is None or when < self.not_after)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "public_key": _b64(self.public_key),
            "not_before": self.not_before,
            "not_after": self.not_after,
        }


@dataclass(frozen=True)
class Keyring:
    keys: tuple[PublicKey, ...] = ()

    def get(self, key_id: str) -> PublicKey | None:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None

    @classmethod
    def parse(cls, text: str, source: str) -> Keyring:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise SigningKeyError(f"{source}: not JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise SigningKeyError(f'{source}: expected {{"keys": [...]}}')
        keys = []
        for index, item in enumerate(doc["keys"]):
            where = f"{source}: keys[{index}]"
            if not isinstance(item, dict) or set(item) != {
                "key_id",
                "public_key",
                "not_before",
                "not_after",
            }:
                raise SigningKeyError(
                    f"{where}: expected exactly key_id, public_key, not_before, not_after"
                )
            key_id, not_before, not_after = item["key_id"], item["not_before"], item["not_after"]
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise SigningKeyError(f"{where}.key_id: bad key id {key_id!r}")
            if not isinstance(item["public_key"], str):
                raise SigningKeyError(f"{where}.public_key: expected base64 text")
            if isinstance(not_before, bool) or not isinstance(not_before, int | float):
                raise SigningKeyError(f"{where}.not_before: expected seconds since the epoch")
            if not_after is not None and (
                isinstance(not_after, bool) or not isinstance(not_after, int | float)
            ):
                raise SigningKeyError(f"{where}.not_after: expected seconds or null")
            public = _unb64(item["public_key"], f"{where}.public_key", 32)
            keys.append(
                PublicKey(
                    key_id,
                    public,
                    float(not_before),
                    None if not_after is None else float(not_after),
                )
            )
        if len({k.key_id for k in keys}) != len(keys):
            raise SigningKeyError(f"{source}: duplicate key_id")
        return cls(tuple(keys))

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            if path.stat().st_size > MAX_KEYRING_BYTES:
                raise SigningKeyError(f"{path}: larger than {MAX_KEYRING_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SigningKeyError(f"{path}: cannot read keyring: {exc}") from exc
        return cls.parse(text, str(path))

    def to_json(self) -> str:
        return json.dumps({"keys": [k.to_json() for k in self.keys]}, indent=2) + "\n"


def _write_private(path: Path, text: str) -> None:
    # SECURITY: created 0600 from the start, never world-readable even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _replace(path: Path, text: str) -> None:
    # A name of its own: two writers never share (and rename away) one temporary file.
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class KeyDirectory:
    """The signing keys and keyring kept under the gateway's data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keyring_path = path / "keyring.json"
        self.private_dir = path / "signing"
        self.active_path = path / "active"

    def keyring(self) -> Keyring:
        if not self.keyring_path.exists():
            return Keyring()
        return Keyring.load(self.keyring_path)

    def active_stamp(self) -> tuple[int, int] | None:
        try:
            info = self.active_path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_ino

    def follow(self, key: SigningKey) -> SigningKey:
        """Make `key` follow this directory's rotations (see SigningKey.current)."""
        key._directory = self
        key._stamp = self.active_stamp()
        return key

    def active(self) -> SigningKey:
        try:
            key_id = self.active_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SigningKeyError(f"{self.active_path}: no active signing key: {exc}") from exc
        if not KEY_ID.fullmatch(key_id):
            raise SigningKeyError(f"{self.active_path}: bad key id {key_id!r}")
        path = self.private_dir / f"{key_id}.key"
        try:
            mode = path.stat().st_mode & 0o777
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SigningKeyError(f"{path}: cannot read signing key: {exc}") from exc
        if mode & 0o077:
            # SECURITY: a signing key others can read could forge checkpoints.
            raise SigningKeyError(f"{path}: mode {mode:o}, must be 0600")
        return SigningKey.from_seed(key_id, _unb64(text, str(path), 32))

    def ensure(self, now: float) -> SigningKey:
        """The active key from the environment or this directory; creates the first key."""
        from_env = SigningKey.from_env()
        if from_env is not None:
            return from_env
        if self.active_path.exists():
            return self.follow(self.active())
        with locked_directory(self.path):
            # Another instance may have created the first key while we waited for the lock.
            if self.active_path.exists():
                return self.follow(self.active())
            return self.follow(self._rotate(now, keep_old_private=False))

    def rotate(self, now: float, *, keep_old_private: bool = False) -> SigningKey:
        """Make a new active key valid from `now`; the previous key's window ends at `now`."""
        with locked_directory(self.path):
            return self._rotate(now, keep_old_private=keep_old_private)

    def _rotate(self, now: float, *, keep_old_private: bool) -> SigningKey:
        self.private_dir.mkdir(exist_ok=True)
        os.chmod(self.private_dir, 0o700)
        ring = self.keyring()
        old_id = (
            self.active_path.read_text(encoding="ascii").strip()
            if self.active_path.exists()
            else None
        )
        key = SigningKey.generate()
        while ring.get(key.key_id) is not None:
            key = SigningKey.generate()
        _write_private(self.private_dir / f"{key.key_id}.key", _b64(key.seed()) + "\n")
        entries = [
            PublicKey(k.key_id, k.public_key, k.not_before, now)
            if k.not_after is None or k.not_after > now
            else k
            for k in ring.keys
        ]
        entries.append(PublicKey(key.key_id, key.public_bytes(), now, None))
        _replace(self.keyring_path, Keyring(tuple(entries)).to_json())
        _replace(self.active_path, key.key_id + "\n")
        if old_id and not keep_old_private and KEY_ID.fullmatch(old_id):
            (self.private_dir / f"{old_id}.key").unlink(missing_ok=True)
        return key
