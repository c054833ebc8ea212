"""Pre-login state: a short-lived signed cookie, so that Redis holds nothing for a browser
that has not proven a password yet.

Until a login is complete, what the console must remember lives in the host-only
`__Host-gw_prelogin` cookie (Secure, HttpOnly, SameSite=Lax, Path=/), never in Redis:

    csrf           the CSRF token of the login, enrolment and logout forms
    pending/enrol  a half-done login or enrolment step (see `console`)
    return/next    where to go after the login

The value is a `signed` token for the purpose `prelogin`: the JSON
`{"d": state, "e": expiry}` (expiry by the gateway's Clock), HMAC-SHA256 under the
hand-off key (`handoff.handoff_key`: kept outside Redis and shared by every instance;
the purpose keeps these signatures apart from return addresses'). A forged, altered,
expired, malformed or oversized cookie is no state at all, so page views from anyone
cost Redis nothing, and a cross-site form still fails its CSRF check: the attacker can
neither read the victim's token nor plant a `__Host-` cookie.

    seal = PreLoginSeal(handoff_key(data_dir), clock, ttl_s=1800)
    value = seal.seal({"csrf": token})
    state = seal.open(value)            # None if forged, altered, expired or malformed
"""

from __future__ import annotations

from typing import Any

from gateway.clock import Clock
from gateway.sessions import signed

# The only names a pre-login state may hold: never a principal or an MFA time.
STATE_NAMES = frozenset({"csrf", "pending", "enrol", "return", "next"})
# Browsers keep a cookie of at most 4096 bytes (name and value): stay well inside it.
MAX_VALUE = 3900
# A remembered `return` or `next` of at most this many characters always fits.
MAX_DESTINATION = 2048

_PURPOSE = "prelogin"


class PreLoginTooLarge(ValueError):
    """The state would not fit in one cookie (it is then not kept at all)."""


class PreLoginSeal:
    def __init__(self, key: bytes, clock: Clock, *, ttl_s: float) -> None:
        self._key = key
        self._clock = clock
        self._ttl_s = ttl_s

    def seal(self, state: dict[str, Any]) -> str:
        """The cookie value carrying `state` (only its STATE_NAMES) until now + ttl."""
        kept = {name: value for name, value in state.items() if name in STATE_NAMES}
        expires = self._clock.now() + self._ttl_s
        value = signed.seal(self._key, _PURPOSE, {"d": kept}, expires_at=expires)
        if len(value) > MAX_VALUE:
            raise PreLoginTooLarge(f"pre-login state of {len(value)} characters")
        return value

    def open(self, value: str | None) -> dict[str, Any] | None:
        """The state sealed in `value` if this gateway sealed it and it has not expired."""
        body = signed.unseal(
            self._key, _PURPOSE, value, now=self._clock.now(), max_length=MAX_VALUE
        )
        state = body.get("d") if body is not None else None
        if not isinstance(state, dict):
            return None
        # SECURITY: a pre-login state never names a login, whatever was sealed.
        return {name: v for name, v in state.items() if name in STATE_NAMES}
