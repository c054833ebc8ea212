"""A renewed TLS certificate is taken on SIGHUP without a restart; bad files keep the old one."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from gateway.config import GatewayConfig, TlsFiles, parse_config
from gateway.server import GatewayServer
from gateway.tls import ensure_demo_tls


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    base = tmp_path / "tls"
    files = TlsFiles(base / "gateway.crt", base / "gateway.key", base / "demo-ca.crt")
    ensure_demo_tls(files)
    return files


@pytest.fixture
async def server(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[GatewayServer]:
    text = "console_url: https://gateway.localhost\ndata_dir: data\n"
    text += "listeners: [{address: 127.0.0.1, port: 0, tls: true}]\n"
    config: GatewayConfig = replace(parse_config(text, "t.yaml", base=tmp_path), tls=tls_files)
    app = web.Application()
    served = GatewayServer(config, app, known_host=lambda _: True)
    await served.start()
    yield served
    await served.stop()


def served_certificate(port: int, ca_file: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="acme.localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def served_fingerprint(server: GatewayServer, tls: TlsFiles) -> str:
    assert tls.ca_file is not None
    return await asyncio.to_thread(served_certificate, server.bound[0].port, tls.ca_file)


def file_fingerprint(tls: TlsFiles) -> str:
    assert tls.cert_file is not None
    der = ssl.PEM_cert_to_DER_cert(tls.cert_file.read_text())
    return hashlib.sha256(der).hexdigest()


def renew(tls: TlsFiles) -> None:
    """A new leaf under the same demo CA, written where the old one was."""
    assert tls.cert_file is not None
    assert tls.key_file is not None
    tls.cert_file.unlink()
    tls.key_file.unlink()
    assert ensure_demo_tls(tls).created


async def test_a_renewed_certificate_is_served_after_reload(
    server: GatewayServer, tls_files: TlsFiles
) -> None:
    first = await served_fingerprint(server, tls_files)
    assert first == file_fingerprint(tls_files)
    renew(tls_files)
    assert await served_fingerprint(server, tls_files) == first  # nothing read until told
    assert server.reload_tls() is True
    renewed = await served_fingerprint(server, tls_files)
    assert renewed == file_fingerprint(tls_files) != first


@pytest.mark.parametrize("damage", ["open-key", "mismatched-key", "garbage-cert", "missing-key"])
async def test_bad_renewed_files_keep_the_certificate_in_force(
    server: GatewayServer, tls_files: TlsFiles, tmp_path: Path, damage: str
) -> None:
    before = await served_fingerprint(server, tls_files)
    assert tls_files.cert_file is not None
    assert tls_files.key_file is not None
    if damage == "open-key":
        renew(tls_files)
        tls_files.key_file.chmod(0o644)
    elif damage == "mismatched-key":
        other = TlsFiles(tmp_path / "o/c.crt", tmp_path / "o/c.key", tmp_path / "o/ca.crt")
        ensure_demo_tls(other)
        assert other.key_file is not None
        tls_files.key_file.write_bytes(other.key_file.read_bytes())
    elif damage == "garbage-cert":
        tls_files.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
    else:
        tls_files.key_file.unlink()
    assert server.reload_tls() is False
    # Old and new handshakes alike still get the certificate loaded before.
    assert await served_fingerprint(server, tls_files) == before


async def test_a_reload_copies_the_key_to_no_directory(
    server: GatewayServer, tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The renewed pair is loaded from anonymous memory files: no temporary directory is
    # needed (a missing one changes nothing) and no descriptor is left open behind it.
    before = await served_fingerprint(server, tls_files)
    renew(tls_files)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such directory"))
    descriptors = len(os.listdir("/proc/self/fd"))
    assert server.reload_tls() is True
    assert server.reload_tls() is True
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert not (tmp_path / "no such directory").exists()
    assert await served_fingerprint(server, tls_files) == file_fingerprint(tls_files) != before
