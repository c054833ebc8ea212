"""`gateway config check` refuses the TLS files `gateway run` would refuse.

A TLS listener needs `tls.cert_file` and `tls.key_file` that exist, load as a pair, and a
key no other local user can read; the check calls the very function the server uses
(`gateway.tls.server_context`), so it can say "ok" only when the server would start.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import TlsFiles
from gateway.tls import ensure_demo_tls
from tests.gateway.test_config import run_check


def write_config(
    tmp_path: Path, tls: str, listeners: str = "{address: 127.0.0.1, port: 8443}"
) -> Path:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  - {name: r, hosts: [a.example], upstream: 'http://127.0.0.1:9', org: o,"
        " default: deny, rules: []}\n"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""console_url: https://gateway.example:8443
data_dir: {tmp_path / "data"}
listeners: [{listeners}]
policy_files: [{routes}]
{tls}"""
    )
    return config


@pytest.fixture
def material(tmp_path: Path) -> TlsFiles:
    files = TlsFiles(tmp_path / "tls/gw.crt", tmp_path / "tls/gw.key", tmp_path / "tls/ca.crt")
    ensure_demo_tls(files, names=["gateway.example"])
    return files


def tls_section(files: TlsFiles) -> str:
    return f"tls: {{cert_file: {files.cert_file}, key_file: {files.key_file}}}\n"


def test_good_tls_files_pass(
    tmp_path: Path, material: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_check(write_config(tmp_path, tls_section(material)), capsys)
    assert (code, err) == (0, "")
    assert ": ok (console https://gateway.example:8443, 1 listener(s)" in out


def test_a_tls_listener_without_tls_files_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "")
    code, out, err = run_check(config, capsys)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{config}: tls: a TLS listener needs tls.cert_file and tls.key_file "
        "(or set tls: false on it)",
        f"{config}: config ok, TLS files: 1 error(s)",
    ]


def test_a_missing_key_fails(
    tmp_path: Path, material: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    assert material.key_file is not None
    material.key_file.unlink()
    config = write_config(tmp_path, tls_section(material))
    code, out, err = run_check(config, capsys)
    assert (code, out) == (1, "")
    assert f"{config}: tls: {material.key_file}: no such file" in err


def test_a_world_readable_key_fails(
    tmp_path: Path, material: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    assert material.key_file is not None
    os.chmod(material.key_file, 0o644)
    code, out, err = run_check(write_config(tmp_path, tls_section(material)), capsys)
    assert (code, out) == (1, "")
    assert "mode 0644; the TLS key must not be o+r" in err


def test_a_key_that_does_not_fit_the_certificate_fails(
    tmp_path: Path, material: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    assert material.key_file is not None
    assert material.cert_file is not None
    other = TlsFiles(tmp_path / "o/o.crt", tmp_path / "o/o.key", tmp_path / "o/ca.crt")
    ensure_demo_tls(other, names=["other.example"])
    assert other.key_file is not None
    config = write_config(
        tmp_path, f"tls: {{cert_file: {material.cert_file}, key_file: {other.key_file}}}\n"
    )
    code, out, err = run_check(config, capsys)
    assert (code, out) == (1, "")
    assert "cannot load certificate and key" in err


def test_garbage_in_the_certificate_file_fails(
    tmp_path: Path, material: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    assert material.cert_file is not None
    material.cert_file.write_bytes(b"\x00not a certificate\xff" * 1000)
    code, out, err = run_check(write_config(tmp_path, tls_section(material)), capsys)
    assert (code, out) == (1, "")
    assert "cannot load certificate and key" in err


def test_plain_listeners_need_no_tls_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "", "{address: 127.0.0.1, port: 8080, tls: false}")
    code, out, err = run_check(config, capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"{config}: ok")


def test_policy_and_tls_problems_are_reported_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "")
    (tmp_path / "routes.yaml").write_text("routes: 3\n")
    code, out, err = run_check(config, capsys)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert any("routes" in line for line in lines[:-2])
    assert lines[-2].startswith(f"{config}: tls: a TLS listener needs tls.cert_file")
    assert lines[-1] == f"{config}: config ok, policy files: 1 error(s), TLS files: 1 error(s)"
