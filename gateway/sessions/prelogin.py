"""Pre-login state: a short-lived signed cookie, so that Redis holds nothing for a browser
that has not proven a password yet.

Until a login is complete, what the console must remember lives in the host-only
`__Host-gw_prelogin` cookie (Secure, HttpOnly, SameSite=Lax, Path=/), never in Redis:

    csrf           the CSRF token of the login, enrolment and logout forms
    pending/enrol  a half-done login or enrolment step (see `console`)
    return/next    where to go after the login

The value is `<payload>.<mac>`: the payload is the base64url of the JSON
`{"d": state, "e": expiry}` (expiry by the gateway's Clock), the mac the HMAC-SHA256 of
`prelogin|<payload>` under the hand-off key (kept outside Redis and shared by every
instance; the prefix keeps these signatures apart from return addresses'). A forged,
altered, expired, malformed or oversized cookie is no state at all, so page views from
anyone cost Redis nothing, and a cross-site form still fails its CSRF check: the
attacker can neither read the victim's token nor plant a `__Host-` cookie.

    seal = PreLoginSeal(key, clock, ttl_s=1800)
    value = seal.seal({"csrf": token})
    state = seal.open(value)            # None if forged, altered, expired or malformed
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from gateway.accounts.keyfile import secret_key
from gateway.clock import Clock
from gateway.sessions.handoff import HANDOFF_KEY_ENV

# The only names a pre-login state may hold: never a principal or an MFA time.
STATE_NAMES = frozenset({"csrf", "pending", "enrol", "return", "next"})
# Browsers keep a cookie of at most 4096 bytes (name and value): stay well inside it.
MAX_VALUE = 3900
# A remembered `return` or `next` of at most this many characters always fits.
MAX_DESTINATION = 2048

_KEYS: dict[tuple[str, str | None], bytes] = {}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PreLoginTooLarge(ValueError):
    """The state would not fit in one cookie (it is then not kept at all)."""


class PreLoginSeal:
    def __init__(self, key: bytes, clock: Clock, *, ttl_s: float) -> None:
        self._key = key
        self._clock = clock
        self._ttl_s = ttl_s

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, b"prelogin|" + payload.encode("ascii"), hashlib.sha256)
        return _b64(digest.digest())

    def seal(self, state: dict[str, Any]) -> str:
        """The cookie value carrying `state` (only its STATE_NAMES) until now + ttl."""
        kept = {name: value for name, value in state.items() if name in STATE_NAMES}
        body = json.dumps({"d": kept, "e": self._clock.now() + self._ttl_s}, separators=(",", ":"))
        payload = _b64(body.encode("utf-8"))
        value = f"{payload}.{self._mac(payload)}"
        if len(value) > MAX_VALUE:
            raise PreLoginTooLarge(f"pre-login state of {len(value)} characters")
        return value

    def open(self, value: str | None) -> dict[str, Any] | None:
        """The state sealed in `value` if this gateway sealed it and it has not expired."""
        if not value or len(value) > MAX_VALUE or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        try:
            expected = self._mac(payload)
        except UnicodeEncodeError:
            return None
        # SECURITY: constant-time check that this gateway sealed the state (no forgery).
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            return None
        try:
            body = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(body, dict):
            return None
        state, expires = body.get("d"), body.get("e")
        if not isinstance(state, dict) or isinstance(expires, bool):
            return None
        if not isinstance(expires, int | float) or self._clock.now() >= expires:
            return None
        # SECURITY: a pre-login state never names a login, whatever was sealed.
        return {name: v for name, v in state.items() if name in STATE_NAMES}


def prelogin_key(data_dir: Path) -> bytes:
    """The hand-off key (environment or data_dir file), read once per process and place."""
    place = (str(data_dir), os.environ.get(HANDOFF_KEY_ENV))
    key = _KEYS.get(place)
    if key is None:
        key = _KEYS[place] = secret_key(data_dir, "handoff", env=HANDOFF_KEY_ENV)
    return key
