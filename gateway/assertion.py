"""The identity assertion: the JWT the gateway hands the upstream as `X-Gateway-Assertion`.

This module owns the ES256 signing keys (each with a `kid`), their storage, their
rotation, the published key set (`/.gateway/jwks.json` on the console origin) and the
claims of every assertion:

    signer = load_signer(config.data_dir / "keys", issuer=config.console_url)
    token = signer.sign(grant, audience="https://acme.localhost:8443", now=clock.now())
    token = signer.assertion(grant, audience, now)   # per request: reuses a recent one
    claims = verify(token, signer.jwks(), audience="https://acme.localhost:8443",
                    issuer=config.console_url)
    # {"iss": ..., "aud": ..., "sub": "bob", "act": {"sub": "sam"}, "org": "acme",
    #  "grant": "r-1", "scope": "read", "iat": ..., "nbf": ..., "exp": ..., "jti": ...}

Keys live as PEM files, mode 0600, in a 0700 directory (the gateway uses
`<data_dir>/keys/`), named `<created>-<kid>.pem` (other files there are not keys and are
left alone): the newest signs, every kept key is published so that tokens signed just
before a rotation still verify. `rotate()` adds a key and prunes the oldest. Creating the
first key and rotating hold a lock on the directory (flock), so that gateway
instances sharing the directory and starting at once sign with, and publish, one key.
Alternatively GATEWAY_ASSERTION_KEYS holds one or more PEM private keys (the last signs)
and nothing is read from or written to disk.

`assertion()` is what the forwarder calls for every request: it hands out the token
last signed for the same grant (same member, actor, org, scope, start and end), audience
and key while that token has at least REUSE_MIN_LIFE_S (4 of its 5 minutes) left, or
lasts until the grant's end anyway; otherwise it signs a new one. An upstream thus sees
the same token (and `jti`) for up to a minute of one grant's requests. Revocation
still takes effect at once: the grant is checked live before every request and no token
is handed out for a grant that did not pass. Entries are dropped once expired.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from audit.dirlock import locked_directory
from gateway.errors import AssertionRefused, KeyMaterialError
from gateway.identity import ActingGrant

ALGORITHM = "ES256"
MAX_LIFETIME_S = 300  # DESIGN: an assertion lives at most 5 minutes
REUSE_MIN_LIFE_S = 240  # a reused assertion has at least this long left (4 of its 5 min)
# Tokens kept for reuse at most: the key holds the audience (the Host as received), so a
# client naming many distinct hosts or ports must not grow the table without bound.
REUSE_TABLE_SIZE = 4096
KEEP_KEYS = 3  # published keys after a rotation: the new one and the two before it
ENV_KEYS = "GATEWAY_ASSERTION_KEYS"
JWKS_MAX_AGE_S = 300

_KEY_FILE = re.compile(r"^(\d{10,})-([A-Za-z0-9_-]{16,64})\.pem$")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN (?:EC )?PRIVATE KEY-----.+?-----END (?:EC )?PRIVATE KEY-----", re.S
)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_jwk(self) -> dict[str, Any]:
        return {
            **_jwk(self.private_key.public_key()),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


def _jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    if not isinstance(jwk, dict):
        raise KeyMaterialError(f"cannot express {public_key} as a JWK")
    return dict(jwk)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 thumbprint of the public key, base64url: stable across restarts."""
    jwk = _jwk(public_key)
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _signing_key(private_key: ec.EllipticCurvePrivateKey) -> SigningKey:
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise KeyMaterialError(f"assertion key must be P-256 for ES256, not {private_key.curve}")
    return SigningKey(key_id(private_key.public_key()), private_key)


def _load_pem(data: bytes, where: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{where}: not a PEM private key without password: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(f"{where}: not an EC private key")
    return _signing_key(key)


class AssertionSigner:
    """Signs assertions with the newest key; publishes every key it holds."""

    def __init__(self, keys: Sequence[SigningKey], *, issuer: str) -> None:
        if not keys:
            raise KeyMaterialError("an assertion signer needs at least one key")
        self.keys = tuple(keys)
        self.issuer = issuer
        self.current = self.keys[-1]
        self._jwks = {"keys": [key.public_jwk for key in self.keys]}
        # (grant facts, audience, kid) -> (token, iat, exp) of the last token signed
        self._recent: dict[tuple[object, ...], tuple[str, int, int]] = {}
        self._prune_at = 0.0

    def assertion(self, grant: ActingGrant, audience: str, now: float) -> str:
        """The assertion for one forwarded request: a recent one while it is good enough.

        Raises AssertionRefused, as `sign` does, for a grant that is not live at `now`.
        """
        issued = math.floor(now)
        # SECURITY: every fact a token states (and the grant's times) is part of the key,
        # so a token is only ever reused for exactly the grant it was signed for.
        key = (
            grant.grant_id,
            grant.member_id,
            grant.actor.id,
            grant.org,
            grant.scope.value,
            grant.starts_at,
            grant.expires_at,
            audience,
            self.current.kid,
        )
        recent = self._recent.get(key)
        if recent is not None and now >= grant.starts_at:
            token, iat, exp = recent
            # A fresh token would expire at min(now + 5 min, grant end): the recent one is
            # as good when it has 4 minutes left or already lasts until the grant's end.
            fresh_exp = min(issued + MAX_LIFETIME_S, math.floor(grant.expires_at))
            if iat <= issued < exp and (exp - now >= REUSE_MIN_LIFE_S or exp >= fresh_exp):
                return token
        token = self.sign(grant, audience, now)
        expires = min(issued + MAX_LIFETIME_S, math.floor(grant.expires_at))
        if now >= self._prune_at:
            # Tokens past their exp are never handed out again: drop them (ended grants).
            self._recent = {k: v for k, v in self._recent.items() if v[2] > issued}
            self._prune_at = now + REUSE_MIN_LIFE_S / 4
        while len(self._recent) >= REUSE_TABLE_SIZE:
            del self._recent[next(iter(self._recent))]  # the oldest signed goes first
        self._recent[key] = (token, issued, expires)
        return token

    def sign(self, grant: ActingGrant, audience: str, now: float) -> str:
        """One assertion for one forwarded request of `grant` to the origin `audience`."""
        # SECURITY: an assertion never outlives the grant it speaks for, nor 5 minutes.
        expires = min(math.floor(now) + MAX_LIFETIME_S, math.floor(grant.expires_at))
        issued = math.floor(now)
        if expires <= issued or now < grant.starts_at:
            raise AssertionRefused(
                f"grant {grant.grant_id} is not live at {now} "
                f"(from {grant.starts_at} to {grant.expires_at})"
            )
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": grant.member_id,
            "act": {"sub": grant.actor.id},
            "org": grant.org,
            "grant": grant.grant_id,
            "scope": grant.scope.value,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(
            claims,
            self.current.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self.current.kid, "typ": "JWT"},
        )

    def jwks(self) -> dict[str, Any]:
        """The JWK Set of every published public key (a fresh copy)."""
        return json.loads(json.dumps(self._jwks))  # type: ignore[no-any-return]


def verify(
    token: str,
    jwks: Mapping[str, Any],
    *,
    audience: str,
    issuer: str,
    now: float | None = None,
    leeway_s: float = 0.0,
) -> dict[str, Any]:
    """Verify an assertion against a JWK Set, as an upstream does; raises jwt.InvalidTokenError.

    The key is chosen by `kid`; only ES256 is accepted (never `none` or an HMAC confusion).
    `now` lets tests judge expiry on a manual clock.
    """
    header = jwt.get_unverified_header(token)
    kid = header.get("kid")
    # SECURITY: the algorithm is fixed by us, never taken from the token's header.
    if header.get("alg") != ALGORITHM or not isinstance(kid, str):
        raise jwt.InvalidAlgorithmError(f"assertion header must be ES256 with a kid: {header}")
    keys = [k for k in jwks.get("keys", ()) if isinstance(k, Mapping) and k.get("kid") == kid]
    if len(keys) != 1:
        raise jwt.InvalidTokenError(f"no single published key with kid {kid!r}")
    try:
        public_key = ECAlgorithm.from_jwk(json.dumps(dict(keys[0])))
    except jwt.PyJWTError as exc:
        raise jwt.InvalidTokenError(f"published key {kid!r} is unusable: {exc}") from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise jwt.InvalidTokenError(f"published key {kid!r} is not an EC public key")
    options: dict[str, Any] = {"require": ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]}
    if now is not None:
        # PyJWT judges time by the wall clock; a manual clock is applied below instead.
        options.update(verify_exp=False, verify_nbf=False, verify_iat=False)
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key,
        algorithms=[ALGORITHM],
        audience=audience,
        issuer=issuer,
        leeway=leeway_s,
        options=options,  # type: ignore[arg-type]
    )
    if now is not None:
        if not claims["nbf"] - leeway_s <= now:
            raise jwt.ImmatureSignatureError("the assertion is not yet valid")
        if not now < claims["exp"] + leeway_s:
            raise jwt.ExpiredSignatureError("the assertion has expired")
    return claims


# --- key storage ----------------------------------------------------------------------
def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    # SECURITY: a signing key others can read lets them forge identities; refuse to use it.
    if mode & 0o077:
        raise KeyMaterialError(f"{path}: mode {mode:04o}; private keys must be 0600")


def _stored_keys(directory: Path) -> list[tuple[str, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _KEY_FILE.match(path.name)
        if match:
            found.append((path.name, path))
    return sorted(found)


def _write_new_key(directory: Path, created: float) -> SigningKey:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # SECURITY: only the gateway's user lists or reads its keys
    key = _signing_key(ec.generate_private_key(ec.SECP256R1()))
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    final = directory / f"{int(created):010d}-{key.kid}.pem"
    partial = directory / f".{final.name}.{secrets.token_hex(4)}.tmp"
    # SECURITY: created 0600 from the first byte, then renamed into place whole.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, final)
    return key


def _read_directory(directory: Path) -> list[SigningKey]:
    keys = []
    for _, path in _stored_keys(directory):
        _check_private(path)
        keys.append(_load_pem(path.read_bytes(), str(path)))
    return keys


def load_signer(
    directory: Path,
    *,
    issuer: str,
    environ: Mapping[str, str] | None = None,
    create: bool = True,
) -> AssertionSigner:
    """The signer from GATEWAY_ASSERTION_KEYS, else from `directory` (a key made if none)."""
    env = os.environ if environ is None else environ
    pems = env.get(ENV_KEYS)
    if pems:
        blocks = _PEM_BLOCK.findall(pems.encode())
        if not blocks:
            raise KeyMaterialError(f"{ENV_KEYS} holds no PEM private key")
        return AssertionSigner(
            [_load_pem(block, f"{ENV_KEYS}[{i}]") for i, block in enumerate(blocks)],
            issuer=issuer,
        )
    keys = _read_directory(directory)
    if not keys:
        if not create:
            raise KeyMaterialError(f"{directory}: no assertion signing key")
        with locked_directory(directory):
            # SECURITY-adjacent: instances starting at once would each make a key of their
            # own and publish only it: an upstream holding one instance's key set would
            # refuse the others' assertions. The one that got the lock first makes it.
            keys = _read_directory(directory) or [_write_new_key(directory, time.time())]
    return AssertionSigner(keys, issuer=issuer)


def rotate(directory: Path, *, keep: int = KEEP_KEYS, now: float | None = None) -> SigningKey:
    """Add a new signing key and delete all but the newest `keep` (which stay published).

    Running gateways pick the new key up when they next load their signer (restart).
    """
    if keep < 2:
        # SECURITY-adjacent: keeping only the new key would break tokens signed moments ago.
        raise ValueError(f"keep={keep}: keep at least the new key and the previous one")
    created = time.time() if now is None else now
    with locked_directory(directory):
        for name, _ in _stored_keys(directory)[-1:]:
            newest = int(name.split("-", 1)[0])
            created = max(created, newest + 1)  # file names order keys; never tie or go back
        key = _write_new_key(directory, created)
        for _, path in _stored_keys(directory)[:-keep]:
            path.unlink()
    return key


# --- the published key set --------------------------------------------------------------
def jwks_handler(signer: AssertionSigner) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler for the console's `GET /.gateway/jwks.json`."""
    body = json.dumps(signer.jwks(), separators=(",", ":"))

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            text=body,
            content_type="application/jwk-set+json",
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"},
        )

    return handle
