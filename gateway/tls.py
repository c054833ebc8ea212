"""TLS for the gateway's listeners: the server SSL context, and the demo's own CA.

`server_context(tls)` builds the one SSL context every TLS listener uses: TLS 1.2 at
least, HTTP/1.1 by ALPN, certificate chain and key from the config's `tls:` section;
`reload_certificate(context, tls)` loads renewed files into it (on SIGHUP), or changes
nothing when they are bad.

`ensure_demo_tls(tls)` makes what `make demo` needs when it is missing or no longer
fits: a self-signed demo CA (name-constrained to `localhost` names and loopback, so that
trusting it cannot vouch for any other site) and a leaf certificate it signs for
gateway.localhost, *.localhost, acme.localhost, localhost and 127.0.0.1. Private keys are
written 0600; valid material is reused, so the CA a browser was told to trust survives
restarts.

    material = ensure_demo_tls(config.tls)      # var/tls/{demo-ca,gateway}.{crt,key}
    context = server_context(config.tls)
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import ssl
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import TlsFiles
from gateway.errors import KeyMaterialError
from gateway.proxy.sni import record_sni

DEMO_NAMES: tuple[str, ...] = (
    "gateway.localhost",
    "*.localhost",
    "acme.localhost",
    "localhost",
    "127.0.0.1",
)
CA_LIFETIME = datetime.timedelta(days=825)
LEAF_LIFETIME = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=7)


# --- the listeners' context ---------------------------------------------------------------
def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """The SSL context of every TLS listener; raises KeyMaterialError on bad files."""
    cert_file, key_file = _checked_files(tls)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # SECURITY: TLS 1.2 is the floor on every listener (DESIGN "Security stance").
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_COMPRESSION
    record_sni(context)  # the route stage answers 421 when SNI and Host disagree
    _load_pair_into(context, cert_file, key_file)
    return context


def reload_certificate(context: ssl.SSLContext, tls: TlsFiles) -> None:
    """Load a renewed certificate and key into the live `context`: new handshakes use them.

    The files are read once and tried on a throw-away context first, so that a bad pair
    (or one replaced half-way through) raises KeyMaterialError and leaves `context` as it
    was, still serving the certificate loaded before. Both loads read the same bytes, from
    anonymous memory files: the key is never copied to any directory.
    """
    cert_file, key_file = _checked_files(tls)
    try:
        cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"{cert_file} / {key_file}: cannot read: {exc}") from exc
    try:
        with _in_memory(cert_pem) as copy_cert, _in_memory(key_pem) as copy_key:
            trial = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            _load_pair_into(trial, copy_cert, copy_key)
            _load_pair_into(context, copy_cert, copy_key)
    except OSError as exc:  # no memory file to be had, say: the old pair stays
        raise KeyMaterialError(f"{cert_file} / {key_file}: cannot reload: {exc}") from exc


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[Path]:
    """A path that reads `data` from an anonymous memory file of this process alone.

    OpenSSL loads certificates and keys only by path; `memfd_create` gives one without
    writing the bytes anywhere: not to disk, not to a directory another process could list,
    and the file vanishes with its descriptor (or the process).
    """
    # SECURITY: the private key is never written to a file system, not even a temporary one.
    descriptor = os.memfd_create("gateway-tls", os.MFD_CLOEXEC)
    try:
        with os.fdopen(descriptor, "wb", closefd=False) as handle:
            handle.write(data)
        yield Path(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)


def _checked_files(tls: TlsFiles) -> tuple[Path, Path]:
    if tls.cert_file is None or tls.key_file is None:
        raise KeyMaterialError(
            "a TLS listener needs tls.cert_file and tls.key_file (or set tls: false on it)"
        )
    for path in (tls.cert_file, tls.key_file):
        if not path.is_file():
            raise KeyMaterialError(f"{path}: no such file")
    mode = stat.S_IMODE(tls.key_file.stat().st_mode)
    # SECURITY: a TLS key every local user can read is as good as published; refuse it.
    if mode & 0o007:
        raise KeyMaterialError(f"{tls.key_file}: mode {mode:04o}; the TLS key must not be o+r")
    return tls.cert_file, tls.key_file


def _load_pair_into(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise KeyMaterialError(
            f"{cert_file} / {key_file}: cannot load certificate and key: {exc}"
        ) from exc


# --- the demo's CA and certificate ------------------------------------------------------------
@dataclass(frozen=True)
class DemoTls:
    ca_file: Path
    cert_file: Path
    key_file: Path
    created: bool  # False when valid material on disk was reused


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # SECURITY: private keys are 0600 from their first byte, then renamed into place whole.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _ca_files(tls: TlsFiles) -> tuple[Path, Path, Path, Path]:
    if tls.cert_file is None or tls.key_file is None or tls.ca_file is None:
        raise KeyMaterialError("the demo needs tls.cert_file, tls.key_file and tls.ca_file")
    ca_key = tls.ca_file.with_suffix(".key")
    return tls.ca_file, ca_key, tls.cert_file, tls.key_file


def _make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Impersonation gateway demo"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Gateway demo CA {now:%Y-%m-%d} {secrets.token_hex(3)}"
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # SECURITY: whoever trusts the demo CA trusts it for localhost names and loopback only.
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: Sequence[str],
    now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + LEAF_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_pair(
    cert_file: Path, key_file: Path, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    """A stored certificate and its key if whole, private, matching and valid long enough."""
    try:
        # SECURITY: a key others could read is not reused; fresh material replaces it.
        if stat.S_IMODE(key_file.stat().st_mode) & 0o077:
            return None
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return None
    return key, cert


def _leaf_fits(
    cert_file: Path,
    key_file: Path,
    ca_cert: x509.Certificate,
    names: Sequence[str],
    now: datetime.datetime,
) -> bool:
    """The stored leaf is usable, signed by `ca_cert` and names every one of `names`."""
    pair = _load_pair(cert_file, key_file, now)
    if pair is None:
        return False
    try:
        pair[1].verify_directly_issued_by(ca_cert)
        sans = pair[1].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return set(_general_names(names)) <= set(sans)


def ensure_demo_tls(
    tls: TlsFiles, names: Sequence[str] = DEMO_NAMES, *, now: datetime.datetime | None = None
) -> DemoTls:
    """Reuse valid demo TLS material at the config's paths, or make it (CA key beside the CA)."""
    ca_file, ca_key_file, cert_file, key_file = _ca_files(tls)
    moment = now or _utcnow()
    created = False
    ca = _load_pair(ca_file, ca_key_file, moment)
    if ca is None:
        ca = _make_ca(moment)
        _write(ca_key_file, _key_pem(ca[0]), 0o600)
        _write(ca_file, ca[1].public_bytes(serialization.Encoding.PEM), 0o644)
        created = True
    if created or not _leaf_fits(cert_file, key_file, ca[1], names, moment):
        leaf_key, leaf = _make_leaf(ca[0], ca[1], names, moment)
        _write(key_file, _key_pem(leaf_key), 0o600)
        _write(cert_file, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
        created = True
    for directory in {ca_file.parent, cert_file.parent}:
        os.chmod(directory, 0o700)  # SECURITY: the demo's keys sit in a private directory
    return DemoTls(ca_file=ca_file, cert_file=cert_file, key_file=key_file, created=created)
