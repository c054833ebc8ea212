"""`gateway demo` refuses to start with a clear message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway.redis_servers import free_port


def test_an_invalid_policy_is_reported_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "routes:\n  - {name: r, hosts: [acme.localhost], upstream: 'http://127.0.0.1:9',"
        " org: o, default: maybe, rules: []}\n"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "console_url: https://gateway.localhost:8443\n"
        f"data_dir: {tmp_path / 'var'}\n"
        "listeners: [{address: 127.0.0.1, port: 0}]\n"
        f"tls: {{cert_file: {tmp_path / 'var/tls/g.crt'}, key_file: {tmp_path / 'var/tls/g.key'},"
        f" ca_file: {tmp_path / 'var/tls/ca.crt'}}}\n"
        f"policy_files: [{policy}]\n"
    )
    code = main(
        [
            "demo",
            "--config",
            str(config),
            "--directory",
            str(tmp_path / "none.yaml"),
            "--app-port",
            str(free_port()),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{policy}:2: routes[0].default: allow or deny (got 'maybe')" in err
    assert "Traceback" not in err
    assert "The demo is running" not in out
    # and its embedded Redis was stopped with it
    running = [
        entry.name
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and str(tmp_path) in _cmdline(entry)
    ]
    assert running == []


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""  # it ended while we looked
