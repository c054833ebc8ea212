"""The hand-off between a routed host and the console (DESIGN.md "Two kinds of origin").

1. A routed host without an app session sends the browser to the console's login with
   a *signed return address*: `https://<routed host>/<path>` plus an expiry, HMAC-SHA256
   under a key kept outside Redis. The console accepts only addresses it signed, that
   have not expired, that are https and whose host is a routed host now: no open
   redirect, whatever the query string says.
2. After login (and MFA) the console issues a *hand-off code*: 256 random bits, stored
   in Redis only as its SHA-256 with the console session, the routed host and the path,
   valid `sessions.handoff_code_ttl_s` seconds by the Clock.
3. The routed host's `/.gateway/auth?code=…` redeems the code once (GETDEL: a second
   use finds nothing), only on the host it was issued for, and sets the host-only
   app-session cookie (see `app_sessions`).

    addresses = ReturnAddresses(key, clock)
    token = addresses.sign("https://acme.gateway.example:8443/invoices?page=2")
    url = addresses.verify(token, is_routed_host)      # None if forged/expired/off-route
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway import keys
from gateway.clock import Clock
from gateway.sessions.records import json_object

RETURN_TTL_S = 3600  # time to log in (and enrol) between leaving a routed host and coming back
MAX_RETURN = 4096
HANDOFF_KEY_ENV = "GATEWAY_HANDOFF_KEY"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def routed_url_parts(url: str) -> tuple[str, str, str] | None:
    """(host name, netloc, path?query) of an https URL fit to return to, else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    path = parts.path or "/"
    if parts.scheme != "https" or not host or parts.username or parts.password:
        return None
    if not path.startswith("/") or path.startswith("//") or "\\" in url or parts.fragment:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return None
    del port
    target = path + (f"?{parts.query}" if parts.query else "")
    return host, parts.netloc.lower(), target


class ReturnAddresses:
    def __init__(self, key: bytes, clock: Clock) -> None:
        self._key = key
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, b"return|" + payload.encode(), hashlib.sha256).digest())

    def sign(self, url: str) -> str:
        body = json.dumps({"u": url, "e": self._clock.now() + RETURN_TTL_S}, separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, is_routed_host: Callable[[str], bool]) -> str | None:
        """The URL signed in `token` if it is genuine, fresh and points at a routed host."""
        if not token or len(token) > MAX_RETURN or token.count(".") != 1:
            return None
        payload, mac = token.split(".")
        # SECURITY: only addresses this gateway signed are followed (no open redirect).
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode("utf-8", "replace")):
            return None
        try:
            body = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(body, dict):
            return None
        url, expires = body.get("u"), body.get("e")
        if not isinstance(url, str) or not isinstance(expires, int | float):
            return None
        if self._clock.now() >= expires:
            return None
        parts = routed_url_parts(url)
        # SECURITY: and even a signed one must still name a routed host, never the console.
        if parts is None or not is_routed_host(parts[0]):
            return None
        return url


@dataclass(frozen=True)
class HandoffGrant:
    """What a redeemed hand-off code stood for."""

    session_id: str  # the console session (sid)
    principal_key: str
    host: str  # the routed host name it is valid on
    target: str  # path?query to land on after the exchange


class HandoffCodes:
    def __init__(self, redis: aioredis.Redis, clock: Clock, ttl_s: int) -> None:
        self._redis = redis
        self._clock = clock
        self._ttl_s = ttl_s

    async def issue(self, session_id: str, principal_key: str, host: str, target: str) -> str:
        code = secrets.token_urlsafe(32)
        record = {
            "sid": session_id,
            "principal": principal_key,
            "host": host.lower(),
            "target": target,
            "expires_at": self._clock.now() + self._ttl_s,
        }
        digest = hashlib.sha256(code.encode()).hexdigest()
        await self._redis.set(keys.handoff_code(digest), json.dumps(record), ex=self._ttl_s + 5)
        return code

    async def redeem(self, code: str, host: str) -> HandoffGrant | None:
        """Spend `code` on `host`: once, in time, on its own host; else None."""
        if not code or len(code) > 128:
            return None
        digest = hashlib.sha256(code.encode("utf-8", "replace")).hexdigest()
        # SECURITY: GETDEL makes the code single-use even across gateway instances; a
        # code presented on the wrong host is spent too (it may have leaked).
        record = json_object(await self._redis.getdel(keys.handoff_code(digest)))
        if record is None or not isinstance(record.get("expires_at"), int | float):
            return None
        if self._clock.now() >= record["expires_at"]:
            return None
        fields = [record.get(name) for name in ("sid", "principal", "host", "target")]
        if not all(isinstance(value, str) for value in fields):
            return None  # SECURITY: a damaged record is no code (fail closed, no 500)
        sid, principal, issued_for, target = (str(value) for value in fields)
        if not hmac.compare_digest(issued_for, host.lower()):
            return None
        return HandoffGrant(sid, principal, issued_for, target)
