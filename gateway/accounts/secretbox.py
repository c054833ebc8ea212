"""Encryption of TOTP secrets at rest (AES-256-GCM, key outside Redis).

Each ciphertext is bound to its account by associated data (the principal key), so a
secret copied from one account's record to another's does not decrypt.
Stored form: `v1.<nonce b64url>.<ciphertext b64url>`.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.accounts.errors import SecretKeyError


def _enc(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _dec(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TotpSecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SecretKeyError(f"TOTP key: expected 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, secret: str, principal_key: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), principal_key.encode())
        return f"v1.{_enc(nonce)}.{_enc(sealed)}"

    def open(self, stored: str, principal_key: str) -> str:
        """The plain secret; raises SecretKeyError if it was tampered with or moved."""
        try:
            version, nonce, sealed = stored.split(".")
            if version != "v1":
                raise ValueError(f"version {version!r}")
            plain = self._aead.decrypt(_dec(nonce), _dec(sealed), principal_key.encode())
            return plain.decode("ascii")
        except (ValueError, InvalidTag, UnicodeDecodeError) as exc:
            raise SecretKeyError(f"TOTP secret of {principal_key} does not decrypt") from exc
