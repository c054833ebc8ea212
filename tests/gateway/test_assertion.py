"""The identity assertion: claims, lifetime, keys on disk, rotation, and verification."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.assertion import (
    ENV_KEYS,
    MAX_LIFETIME_S,
    AssertionSigner,
    jwks_handler,
    load_signer,
    rotate,
    verify,
)
from gateway.errors import AssertionRefused, KeyMaterialError
from tests.gateway.conftest import AUDIENCE, ISSUER, NOW, acting_grant


def test_claims_name_both_identities_and_the_grant(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    claims = verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)
    assert claims["sub"] == "bob"
    assert claims["act"] == {"sub": "sam"}
    assert (claims["org"], claims["grant"], claims["scope"]) == ("acme", "r-1", "read")
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["iat"] == claims["nbf"] == int(NOW)
    assert claims["exp"] == int(NOW) + MAX_LIFETIME_S
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == signer.current.kid


def test_every_token_has_a_fresh_jti(signer: AssertionSigner) -> None:
    tokens = [signer.sign(acting_grant(), AUDIENCE, NOW) for _ in range(50)]
    ids = {jwt.decode(token, options={"verify_signature": False})["jti"] for token in tokens}
    assert len(ids) == 50


def test_exp_is_never_past_the_grants_end(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(expires_at=NOW + 42.9), AUDIENCE, NOW)
    claims = verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)
    assert claims["exp"] == int(NOW) + 42
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW + 42)


@pytest.mark.parametrize(
    ("starts_at", "expires_at"),
    [(NOW - 60, NOW), (NOW - 60, NOW - 1), (NOW - 60, NOW + 0.5), (NOW + 10, NOW + 3600)],
)
def test_no_assertion_for_a_grant_that_is_not_live(
    signer: AssertionSigner, starts_at: float, expires_at: float
) -> None:
    with pytest.raises(AssertionRefused):
        signer.sign(acting_grant(expires_at=expires_at, starts_at=starts_at), AUDIENCE, NOW)


def test_expired_token_fails(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW + MAX_LIFETIME_S)
    # On the wall clock (no `now`), a token signed an hour ago is expired too.
    an_hour_ago = time.time() - 3600
    old = signer.sign(acting_grant(an_hour_ago + 7200, an_hour_ago - 60), AUDIENCE, an_hour_ago)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(old, signer.jwks(), audience=AUDIENCE, issuer=ISSUER)


def test_not_yet_valid_token_fails(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW - 5)


def test_wrong_audience_or_issuer_fails(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, signer.jwks(), audience="https://other.localhost", issuer=ISSUER, now=NOW)
    with pytest.raises(jwt.InvalidIssuerError):
        verify(token, signer.jwks(), audience=AUDIENCE, issuer="https://evil.example", now=NOW)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_tampered_tokens_fail(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = "alice"
    forged_payload = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    sig = bytearray(_unb64(signature))
    sig[5] ^= 1
    flipped = f"{header}.{payload}.{_b64(bytes(sig))}"
    for bad in (forged_payload, flipped, f"{header}.{payload}.", token[:-4], "not.a.jwt", ""):
        with pytest.raises(jwt.InvalidTokenError):
            verify(bad, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)


def _hand_made(header: dict[str, str], claims: dict[str, object], key: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def test_alg_none_and_hmac_confusion_fail(signer: AssertionSigner) -> None:
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = signer.current.kid
    public_jwk = json.dumps(signer.jwks()["keys"][0]).encode()
    public_pem = signer.current.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = [
        _hand_made({"alg": "none", "kid": kid}, claims, None),
        _hand_made({"alg": "HS256", "kid": kid}, claims, public_jwk),
        _hand_made({"alg": "HS256", "kid": kid}, claims, public_pem),
        _hand_made({"alg": "ES256"}, claims, None),
    ]
    for bad in forged:
        with pytest.raises(jwt.InvalidTokenError):
            verify(bad, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)


def test_token_from_another_key_with_the_same_kid_fails(
    signer: AssertionSigner, tmp_path: Path
) -> None:
    other = load_signer(tmp_path / "other", issuer=ISSUER, environ={})
    forged = jwt.encode(
        jwt.decode(signer.sign(acting_grant(), AUDIENCE, NOW), options={"verify_signature": False}),
        other.current.private_key,
        algorithm="ES256",
        headers={"kid": signer.current.kid},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify(forged, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)


def test_unknown_kid_fails(signer: AssertionSigner, tmp_path: Path) -> None:
    other = load_signer(tmp_path / "other", issuer=ISSUER, environ={})
    token = other.sign(acting_grant(), AUDIENCE, NOW)
    with pytest.raises(jwt.InvalidTokenError, match="kid"):
        verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)


def test_keys_are_private_on_disk_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = load_signer(directory, issuer=ISSUER, environ={})
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (pem,) = directory.iterdir()
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    again = load_signer(directory, issuer=ISSUER, environ={})
    assert again.current.kid == first.current.kid
    assert again.jwks() == first.jwks()
    # The published key set has public parts only.
    assert all("d" not in key for key in first.jwks()["keys"])


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    load_signer(directory, issuer=ISSUER, environ={})
    (pem,) = directory.iterdir()
    os.chmod(pem, 0o644)
    with pytest.raises(KeyMaterialError, match="0600"):
        load_signer(directory, issuer=ISSUER, environ={})


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_a_corrupt_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    directory = tmp_path / "keys"
    load_signer(directory, issuer=ISSUER, environ={})
    (pem,) = directory.iterdir()
    pem.write_bytes(content)
    with pytest.raises(KeyMaterialError):
        load_signer(directory, issuer=ISSUER, environ={})


def test_missing_key_without_create_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="no assertion signing key"):
        load_signer(tmp_path / "none", issuer=ISSUER, environ={}, create=False)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_keys_from_the_environment_last_signs_all_published(tmp_path: Path) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    signer = load_signer(
        tmp_path / "unused", issuer=ISSUER, environ={ENV_KEYS: _pem(old) + _pem(new)}
    )
    assert not (tmp_path / "unused").exists()
    assert len(signer.jwks()["keys"]) == 2
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    jwt.decode(
        token,
        new.public_key(),
        algorithms=["ES256"],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )


@pytest.mark.parametrize(
    "value",
    ["nonsense", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"],
)
def test_bad_environment_keys_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(KeyMaterialError):
        load_signer(tmp_path / "k", issuer=ISSUER, environ={ENV_KEYS: value})


def test_non_p256_keys_are_refused(tmp_path: Path) -> None:
    for key in (
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ):
        with pytest.raises(KeyMaterialError):
            load_signer(tmp_path / "k", issuer=ISSUER, environ={ENV_KEYS: _pem(key)})


def test_rotation_publishes_old_keys_and_signs_with_the_new(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    before = load_signer(directory, issuer=ISSUER, environ={})
    old_token = before.sign(acting_grant(), AUDIENCE, NOW)
    new_key = rotate(directory)
    after = load_signer(directory, issuer=ISSUER, environ={})
    assert after.current.kid == new_key.kid != before.current.kid
    assert {k["kid"] for k in after.jwks()["keys"]} == {before.current.kid, new_key.kid}
    # A token signed just before the rotation still verifies against the new key set.
    verify(old_token, after.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)
    new_token = after.sign(acting_grant(), AUDIENCE, NOW)
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    for _ in range(4):
        rotate(directory, keep=3)
    final = load_signer(directory, issuer=ISSUER, environ={})
    assert len(final.jwks()["keys"]) == 3
    assert before.current.kid not in {k["kid"] for k in final.jwks()["keys"]}
    with pytest.raises(jwt.InvalidTokenError, match="kid"):
        verify(old_token, final.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)
    with pytest.raises(ValueError, match="keep"):
        rotate(directory, keep=1)


async def test_a_token_verifies_against_the_jwks_fetched_over_http(
    signer: AssertionSigner,
) -> None:
    app = web.Application()
    app.router.add_get("/.gateway/jwks.json", jwks_handler(signer))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with (
            ClientSession() as client,
            client.get(server.make_url("/.gateway/jwks.json")) as response,
        ):
            assert response.status == 200
            assert response.content_type == "application/jwk-set+json"
            assert "max-age" in response.headers["Cache-Control"]
            published = await response.json(content_type=None)
    finally:
        await server.close()
    token = signer.sign(acting_grant(), AUDIENCE, NOW)
    claims = verify(token, published, audience=AUDIENCE, issuer=ISSUER, now=NOW + 1)
    assert claims["sub"] == "bob"
    # PyJWT's own JWK Set reader accepts what is published, as any upstream library would.
    pyjwk = jwt.PyJWKSet.from_dict(published)[signer.current.kid]
    decoded = jwt.decode(
        token,
        pyjwk,
        algorithms=["ES256"],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert decoded["act"] == {"sub": "sam"}


async def test_concurrent_signing_gives_distinct_valid_tokens(signer: AssertionSigner) -> None:
    async def one() -> str:
        return await asyncio.to_thread(signer.sign, acting_grant(), AUDIENCE, NOW)

    tokens = await asyncio.gather(*(one() for _ in range(40)))
    assert len(set(tokens)) == 40
    for token in tokens:
        verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER, now=NOW)


def test_other_files_in_the_keys_directory_are_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "totp.key").write_text("not an assertion key")
    (directory / "0000000001-short.pem").write_text("a name that is not ours")
    signer = load_signer(directory, issuer=ISSUER, environ={})
    assert len(signer.jwks()["keys"]) == 1
    assert (directory / "totp.key").read_text() == "not an assertion key"
    rotate(directory, keep=2)
    rotate(directory, keep=2)
    assert (directory / "totp.key").exists()
    assert len(load_signer(directory, issuer=ISSUER, environ={}).jwks()["keys"]) == 2
