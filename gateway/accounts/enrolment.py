"""TOTP enrolment: one-time tokens (valid 24 h) that let an account set up its secret.

An admin (or the directory import) issues a token, or resets an account's TOTP: the
account's old secret is removed and only the token's SHA-256 is stored, and every session
of the account ends in the same Redis step as the removal (a lost or leaked second
factor takes what it opened with it).
Enrolling takes the token and the password (checked by the caller), gives a fresh secret
to show as an `otpauth://` URI and QR code, and activates it only when one valid code
from it is presented; that last step is one Lua script, so a token is spent exactly once
even under concurrent attempts.

    gw:enrol:<sha256(token)>   hash: principal, expires_at, pending (sealed secret)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis.asyncio as aioredis

from gateway import keys
from gateway.accounts.errors import AccountNotFound
from gateway.accounts.model import redis_key, text
from gateway.accounts.store import AccountStore
from gateway.accounts.totp import TotpVerifier, new_secret
from gateway.clock import Clock

TOKEN_TTL_S = 24 * 3600
MAX_TOKEN = 128

# KEYS[1]: enrolment record, KEYS[2]: account hash. ARGV: principal, token hash, sealed secret.
_ACTIVATE = """
if redis.call('HGET', KEYS[1], 'principal') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'enrolment_token') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'totp_secret', ARGV[3], 'enrolment_token', '')
return 1
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Enrolment:
    def __init__(self, store: AccountStore, clock: Clock, verifier: TotpVerifier) -> None:
        self._store = store
        self._redis: aioredis.Redis = store.redis
        self._clock = clock
        self._verifier = verifier
        self._activate = self._redis.register_script(_ACTIVATE)

    async def issue(self, principal_key: str) -> str:
        """A new token for the account; its TOTP secret, any older token and every session
        of the account stop working (see `reset`)."""
        token, _ = await self.reset(principal_key)
        return token

    async def reset(self, principal_key: str) -> tuple[str, int]:
        """Remove the account's TOTP secret and issue a token, ending every session of the
        account in the same step as the removal: (token, sessions ended). On a Redis
        error nothing of the account has changed."""
        token, digest = await self._new_token(principal_key)
        # SECURITY: never a removed second factor whose sessions live on, whichever way
        # the token was asked for.
        ended = await self._store.change_credential(
            principal_key, {"totp_secret": "", "enrolment_token": digest}
        )
        return token, ended

    async def _new_token(self, principal_key: str) -> tuple[str, str]:
        """(token, its hash) with its record written; the account does not name it yet (so
        a record left alone by a failure later is inert), and its older token is gone."""
        account = await self._store.get(principal_key)
        if account is None:
            raise AccountNotFound(f"no account {principal_key}")
        token = secrets.token_urlsafe(24)
        digest = token_hash(token)
        expires = self._clock.now() + TOKEN_TTL_S
        async with self._redis.pipeline(transaction=True) as pipe:
            if account.enrolment_token:
                pipe.delete(keys.enrolment(account.enrolment_token))
            pipe.hset(
                keys.enrolment(digest),
                mapping={"principal": principal_key, "expires_at": repr(expires)},
            )
            pipe.expire(keys.enrolment(digest), TOKEN_TTL_S + 60)
            await pipe.execute()
        return token, digest

    async def has_live_token(self, principal_key: str) -> bool:
        account = await self._store.get(principal_key)
        if account is None or not account.enrolment_token:
            return False
        return await self._live(account.enrolment_token, principal_key)

    async def _live(self, digest: str, principal_key: str) -> bool:
        raw = await self._redis.hmget(keys.enrolment(digest), ["principal", "expires_at"])
        if raw[0] is None or raw[1] is None:
            return False
        owner_ok = hmac.compare_digest(text(raw[0]), principal_key)
        # SECURITY: validity is decided by the Clock, not by the key's TTL.
        return owner_ok and float(raw[1]) > self._clock.now()

    async def begin(self, token: str, principal_key: str) -> tuple[str, str] | None:
        """(token hash, new secret) if `token` is this account's live token, else None.

        The caller has already checked the password. Calling again replaces the pending
        secret, so only the QR code shown last can complete enrolment.
        """
        if not token or len(token) > MAX_TOKEN:
            return None
        digest = token_hash(token)
        account = await self._store.get(principal_key)
        if account is None or not hmac.compare_digest(account.enrolment_token, digest):
            return None
        if not await self._live(digest, principal_key):
            return None
        secret = new_secret()
        sealed = self._store.box.seal(secret, f"enrol:{principal_key}")
        await self._redis.hset(keys.enrolment(digest), "pending", sealed)
        return digest, secret

    async def complete(self, digest: str, principal_key: str, code: str) -> bool:
        """Activate the pending secret if `code` is valid for it; the token is then spent."""
        if not await self._live(digest, principal_key):
            return False
        sealed = await self._redis.hget(keys.enrolment(digest), "pending")
        if sealed is None:
            return False
        secret = self._store.box.open(text(sealed), f"enrol:{principal_key}")
        # The code that proves the secret is spent like any login code (once per step).
        if not await self._verifier.verify(principal_key, secret, code):
            return False
        activated = await self._activate(
            keys=[keys.enrolment(digest), redis_key(principal_key)],
            args=[principal_key, digest, self._store.box.seal(secret, principal_key)],
        )
        return bool(activated == 1)
