"""Signed, expiring JSON tokens under the hand-off key: the return addresses of the
hand-off (`handoff`) and the pre-login state (`prelogin`) are both one of these.

A token is `<payload>.<mac>`: the payload is the unpadded base64url of a JSON object
whose `e` is its expiry (by the gateway's Clock), the mac the unpadded base64url of
HMAC-SHA256 over `<purpose>|<payload>`; the purpose keeps one kind of token from ever
passing for another under the same key.

    token = seal(key, "return", {"u": url}, expires_at=clock.now() + 3600)
    body = unseal(key, "return", token, now=clock.now(), max_length=4096)
    # body: the JSON object, or None if forged, altered, expired, malformed or too long
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, purpose: str, payload: str) -> str:
    message = f"{purpose}|".encode("ascii") + payload.encode("ascii")
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def seal(key: bytes, purpose: str, fields: Mapping[str, Any], *, expires_at: float) -> str:
    """The token carrying `fields` (and `e`, the expiry) for `purpose` under `key`."""
    body = json.dumps({**fields, "e": expires_at}, separators=(",", ":"))
    payload = _b64(body.encode("utf-8"))
    return f"{payload}.{_mac(key, purpose, payload)}"


def unseal(
    key: bytes, purpose: str, token: str | None, *, now: float, max_length: int
) -> dict[str, Any] | None:
    """The JSON object sealed in `token` for `purpose`, if this key sealed it and it has
    not expired by `now`; None for anything else (never an exception)."""
    if not token or len(token) > max_length or token.count(".") != 1:
        return None
    payload, mac = token.split(".")
    try:
        expected = _mac(key, purpose, payload)
    except UnicodeEncodeError:
        return None  # no payload this gateway made holds anything but base64url
    # SECURITY: constant-time check that this gateway sealed the token (no forgery).
    if not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8", "replace")):
        return None
    try:
        body = json.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(body, dict):
        return None
    expires = body.get("e")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    if now >= expires:
        return None
    return body
