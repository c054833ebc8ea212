"""The hand-off between a routed host and the console (DESIGN.md "Two kinds of origin").

1. A routed host without an app session sends the browser to the console's login with
   a *signed return address*: `https://<routed host>/<path>` plus an expiry and the
   browser's *binding* (the SHA-256 of a random nonce the routed host keeps in the
   host-only `__Host-gw_handoff` cookie), a `signed` token under the hand-off key
   (`handoff_key`: kept outside Redis).
   The console accepts only addresses it signed, that have not expired, that are https
   and whose host is a routed host now: no open redirect, whatever the query says.
2. After login (and MFA) the console issues a *hand-off code*: 256 random bits, stored
   in Redis only as its SHA-256 with the console session, the routed host and port, the
   path and the binding, valid `sessions.handoff_code_ttl_s` seconds by the Clock.
3. The routed host's `/.gateway/auth?code=…` redeems the code once (GETDEL: a second
   use finds nothing), only on the host and port it was issued for (a port left out is
   its scheme's default: 443 for https, 80 for http) and only from the browser holding
   the nonce, and sets the host-only app-session cookie (see `app_sessions`).
   A code sent to someone else (login CSRF: the victim would act, and be audited, as
   the sender) fails in their browser.

    addresses = ReturnAddresses(key, clock)
    token = addresses.sign("https://acme.gateway.example:8443/invoices?page=2",
                           binding=browser_binding(nonce))
    url = addresses.verify(token, is_routed_host)      # None if forged/expired/off-route
    code = await codes.issue(sid, principal, "acme.gateway.example", "/invoices",
                             binding=binding, port=url_port(url))
    grant = await codes.redeem(code, "acme.gateway.example", nonce, port=8443)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts.keyfile import secret_key
from gateway.clock import Clock
from gateway.sessions import signed
from gateway.sessions.records import json_object, valid_token

RETURN_TTL_S = 3600  # time to log in (and enrol) between leaving a routed host and coming back
MAX_RETURN = 4096
HANDOFF_KEY_ENV = "GATEWAY_HANDOFF_KEY"
_BINDING_HEX = 64
_PURPOSE = "return"

_KEYS: dict[tuple[str, str | None], bytes] = {}


def handoff_key(data_dir: Path) -> bytes:
    """The hand-off key (environment or data_dir file) that signs return addresses and the
    pre-login state, read once per process and place."""
    place = (str(data_dir), os.environ.get(HANDOFF_KEY_ENV))
    key = _KEYS.get(place)
    if key is None:
        key = _KEYS[place] = secret_key(data_dir, "handoff", env=HANDOFF_KEY_ENV)
    return key


def new_nonce() -> str:
    """A fresh browser nonce for the `__Host-gw_handoff` cookie."""
    return secrets.token_urlsafe(32)


def browser_binding(nonce: str | None) -> str | None:
    """The binding a browser's nonce stands for; None when it holds no well-formed one."""
    return browser_nonce(nonce)[1] if valid_token(nonce) else None


def browser_nonce(presented: str | None) -> tuple[str, str]:
    """(nonce, binding): the browser's own nonce when it holds a well-formed one, else a
    fresh one (to be set in its `__Host-gw_handoff` cookie)."""
    nonce = presented if valid_token(presented) else new_nonce()
    return nonce, hashlib.sha256(b"handoff|" + nonce.encode("ascii")).hexdigest()


def _is_binding(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _BINDING_HEX
        and all(c in "0123456789abcdef" for c in value)
    )


@dataclass(frozen=True)
class ReturnAddress:
    """A verified return address and the binding of the browser it was made for."""

    url: str
    binding: str


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


def default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def url_port(url: str) -> int:
    """The port a return address's URL names, or its scheme's default when it names none."""
    parts = urlsplit(url)
    return parts.port or default_port(parts.scheme)


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


class ReturnAddresses:
    def __init__(self, key: bytes, clock: Clock) -> None:
        self._key = key
        self._clock = clock

    def sign(self, url: str, *, binding: str) -> str:
        if not _is_binding(binding):
            raise ValueError("a return address needs the binding of the browser it is for")
        expires = self._clock.now() + RETURN_TTL_S
        return signed.seal(self._key, _PURPOSE, {"u": url, "b": binding}, expires_at=expires)

    def verify(self, token: str, is_routed_host: Callable[[str], bool]) -> str | None:
        """The URL signed in `token` if it is genuine, fresh and points at a routed host."""
        found = self.verify_bound(token, is_routed_host)
        return found.url if found is not None else None

    def verify_bound(
        self, token: str, is_routed_host: Callable[[str], bool]
    ) -> ReturnAddress | None:
        """`verify`, with the binding of the browser the address was made for."""
        # SECURITY: only addresses this gateway signed are followed (no open redirect).
        body = signed.unseal(
            self._key, _PURPOSE, token, now=self._clock.now(), max_length=MAX_RETURN
        )
        if body is None:
            return None
        url, binding = body.get("u"), body.get("b")
        if not isinstance(url, str):
            return None
        if not _is_binding(binding):
            return None  # SECURITY: an address for no browser in particular is no address
        parts = routed_url_parts(url)
        # SECURITY: and even a signed one must still name a routed host, never the console.
        if parts is None or not is_routed_host(parts[0]):
            return None
        return ReturnAddress(url, str(binding))


@dataclass(frozen=True)
class HandoffGrant:
    """What a redeemed hand-off code stood for."""

    session_id: str  # the console session (sid)
    principal_key: str
    host: str  # the routed host name it is valid on
    target: str  # path?query to land on after the exchange
    binding: str  # the browser it was issued for (`browser_binding`)


class HandoffCodes:
    def __init__(self, redis: aioredis.Redis, clock: Clock, ttl_s: int) -> None:
        self._redis = redis
        self._clock = clock
        self._ttl_s = ttl_s

    async def issue(
        self,
        session_id: str,
        principal_key: str,
        host: str,
        target: str,
        *,
        binding: str,
        port: int,
    ) -> str:
        """A code for `host`:`port` (the port of the signed return address, its scheme's
        default when it names none)."""
        if not _is_binding(binding):
            raise ValueError("a hand-off code needs the binding of the browser it is for")
        if not _is_port(port):
            raise ValueError(f"a hand-off code needs the port it is for, not {port!r}")
        code = secrets.token_urlsafe(32)
        record = {
            "sid": session_id,
            "principal": principal_key,
            "host": host.lower(),
            "port": port,
            "target": target,
            "binding": binding,
            "expires_at": self._clock.now() + self._ttl_s,
        }
        digest = hashlib.sha256(code.encode()).hexdigest()
        await self._redis.set(keys.handoff_code(digest), json.dumps(record), ex=self._ttl_s + 5)
        return code

    async def redeem(
        self, code: str, host: str, nonce: str | None, *, port: int
    ) -> HandoffGrant | None:
        """Spend `code` on `host`:`port` (the port the request came to, its scheme's default
        when `Host` names none) from the browser holding `nonce`: once, in time, on its own
        host and port, in its own browser; else None."""
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
        names = ("sid", "principal", "host", "target", "binding")
        fields = [record.get(name) for name in names]
        if not all(isinstance(value, str) for value in fields):
            return None  # SECURITY: a damaged record is no code (fail closed, no 500)
        sid, principal, issued_for, target, binding = (str(value) for value in fields)
        if not hmac.compare_digest(issued_for, host.lower()):
            return None
        # SECURITY: and on its own port: another port of the same name may be another
        # service (a record without a port is damaged: no code).
        if not _is_port(record.get("port")) or record["port"] != port:
            return None
        presented = browser_binding(nonce)
        # SECURITY: only the browser that was sent to log in may finish the hand-off.
        if presented is None or not hmac.compare_digest(binding, presented):
            return None
        return HandoffGrant(sid, principal, issued_for, target, binding)
