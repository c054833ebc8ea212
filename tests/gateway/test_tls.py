"""The demo's TLS material and the listeners' SSL context."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import TlsFiles
from gateway.errors import KeyMaterialError
from gateway.tls import DEMO_NAMES, ensure_demo_tls, server_context


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    base = tmp_path / "tls"
    return TlsFiles(base / "gateway.crt", base / "gateway.key", base / "demo-ca.crt")


def _cert(path: Path | None) -> x509.Certificate:
    assert path is not None
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_demo_material_is_made_private_and_names_every_demo_host(tls_files: TlsFiles) -> None:
    made = ensure_demo_tls(tls_files)
    assert made.created
    assert tls_files.key_file is not None
    assert tls_files.ca_file is not None
    for key in (tls_files.key_file, tls_files.ca_file.with_suffix(".key")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tls_files.key_file.parent.stat().st_mode) == 0o700
    leaf, ca = _cert(tls_files.cert_file), _cert(tls_files.ca_file)
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        n for n in DEMO_NAMES if n != "127.0.0.1"
    }
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_demo_ca_vouches_for_localhost_names_only(tls_files: TlsFiles) -> None:
    ensure_demo_tls(tls_files)
    constraints = _cert(tls_files.ca_file).extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    permitted = constraints.value.permitted_subtrees
    assert permitted is not None
    assert x509.DNSName("localhost") in permitted
    # A leaf for another site signed by that CA fails verification by a real TLS client.
    other = ensure_demo_tls(tls_files, names=("www.example.com",))
    assert other.created
    client = ssl.create_default_context(cafile=str(tls_files.ca_file))
    server = server_context(tls_files)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(incoming, outgoing, server_hostname="www.example.com")
    s = server.wrap_bio(s_in, s_out, server_side=True)

    def handshake() -> None:
        for _ in range(10):
            for side, src, dst in ((c, outgoing, s_in), (s, s_out, incoming)):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                dst.write(src.read())

    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Pp]ermitted|constraint"):
        handshake()


def test_valid_material_is_reused(tls_files: TlsFiles) -> None:
    ensure_demo_tls(tls_files)
    assert tls_files.cert_file is not None
    before = tls_files.cert_file.read_bytes(), _cert(tls_files.ca_file).serial_number
    again = ensure_demo_tls(tls_files)
    assert not again.created
    assert (tls_files.cert_file.read_bytes(), _cert(tls_files.ca_file).serial_number) == before


def test_a_leaf_near_its_end_is_renewed_under_the_same_ca(tls_files: TlsFiles) -> None:
    ensure_demo_tls(tls_files)
    ca_serial = _cert(tls_files.ca_file).serial_number
    leaf_serial = _cert(tls_files.cert_file).serial_number
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=88)
    renewed = ensure_demo_tls(tls_files, now=later)
    assert renewed.created
    assert _cert(tls_files.ca_file).serial_number == ca_serial
    assert _cert(tls_files.cert_file).serial_number != leaf_serial


@pytest.mark.parametrize("damage", ["garbage-leaf", "garbage-ca", "open-key", "other-key"])
def test_damaged_material_is_remade(tls_files: TlsFiles, tmp_path: Path, damage: str) -> None:
    ensure_demo_tls(tls_files)
    assert tls_files.cert_file is not None
    assert tls_files.key_file is not None
    assert tls_files.ca_file is not None
    if damage == "garbage-leaf":
        tls_files.cert_file.write_bytes(b"not a certificate")
    elif damage == "garbage-ca":
        tls_files.ca_file.write_bytes(
            b"-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n"
        )
    elif damage == "open-key":
        os.chmod(tls_files.key_file, 0o644)
    else:
        other = TlsFiles(tmp_path / "o.crt", tmp_path / "o.key", tmp_path / "o-ca.crt")
        ensure_demo_tls(other)
        assert other.key_file is not None
        tls_files.key_file.write_bytes(other.key_file.read_bytes())
    assert ensure_demo_tls(tls_files).created
    assert stat.S_IMODE(tls_files.key_file.stat().st_mode) == 0o600
    server_context(tls_files)  # loads: certificate and key belong together again


def test_server_context_floor_is_tls_1_2(tls_files: TlsFiles) -> None:
    ensure_demo_tls(tls_files)
    context = server_context(tls_files)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_server_context_refuses_missing_or_unsafe_files(tls_files: TlsFiles) -> None:
    with pytest.raises(KeyMaterialError, match=r"needs tls\.cert_file"):
        server_context(TlsFiles())
    with pytest.raises(KeyMaterialError, match="no such file"):
        server_context(tls_files)
    ensure_demo_tls(tls_files)
    assert tls_files.key_file is not None
    assert tls_files.cert_file is not None
    os.chmod(tls_files.key_file, 0o604)
    with pytest.raises(KeyMaterialError, match="o\\+r"):
        server_context(tls_files)
    os.chmod(tls_files.key_file, 0o600)
    tls_files.cert_file.write_bytes(b"junk")
    with pytest.raises(KeyMaterialError, match="cannot load"):
        server_context(tls_files)


def test_demo_needs_every_path(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match=r"tls\.ca_file"):
        ensure_demo_tls(TlsFiles(tmp_path / "a.crt", tmp_path / "a.key"))
