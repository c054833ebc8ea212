"""`gateway policy check|explain`: exit codes and what is printed."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import policy as policy_cli

GOOD = """routes:
  - name: crm
    hosts: [crm.example]
    upstream: http://127.0.0.1:9
    org: acme
    default: deny
    rules:
      - allow: {prefix: /api}
      - deny: {prefix: /api/admin}
"""
BAD = """routes:
  - name: crm
    hosts: [crm.example]
    upstream: ftp://x
    org: acme
    default: perhaps
    rules:
      - allow: {prefix: api}
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The policy command on its own parser, exactly as `gateway` registers it."""
    parser = argparse.ArgumentParser(prog="gateway")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_check_valid(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["policy", "check", str(good)], capsys)
    assert code == 0
    assert out == "ok: 1 file(s), 1 route(s), 1 host(s), 2 rule(s)\n"
    assert err == ""


def test_check_invalid_prints_every_problem(
    good: Path, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["policy", "check", str(good), str(bad)], capsys)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[-1] == "3 error(s)"
    assert lines[0].startswith(f"{bad}:4: routes[0].upstream: an http:// or https:// URL")
    assert lines[0].endswith("(got 'ftp://x')")
    assert lines[1] == f"{bad}:6: routes[0].default: allow or deny (got 'perhaps')"
    assert lines[2].startswith(f"{bad}:8: routes[0].rules[0].allow.prefix: a path starting")


def test_check_duplicate_host_across_files(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(GOOD.replace("name: crm", "name: crm2"))
    code, _out, err = run(["policy", "check", str(good), str(other)], capsys)
    assert code == 1
    assert f"also in route 'crm' at {good}:2" in err


def test_explain_allowed(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(
        ["policy", "explain", "--host", "CRM.example:443", "--policy", str(good), "GET", "/api//x"],
        capsys,
    )
    assert code == 0
    assert out.splitlines() == [
        f"route:    crm ({good}:2) -> http://127.0.0.1:9, org acme",
        "path:     /api/x (forwarded and judged)",
        f"rule:     allow prefix /api (any method) at {good}:8",
        f"decision: allow (GET with a write grant): allowed by rule at {good}:8: "
        "allow prefix /api (any method)",
    ]


def test_explain_denied_by_rule_and_by_scope(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = run(
        [
            "policy",
            "explain",
            "--host",
            "crm.example",
            "--policy",
            str(good),
            "GET",
            "/x/../api/admin",
        ],
        capsys,
    )
    assert code == policy_cli.EXIT_DENIED
    assert "path:     /api/admin (forwarded and judged)" in out
    assert f"rule:     deny prefix /api/admin (any method) at {good}:9" in out
    code, out, _err = run(
        [
            *["policy", "explain", "--host", "crm.example", "--scope", "read"],
            "--policy",
            str(good),
            "DELETE",
            "/api/x",
        ],
        capsys,
    )
    assert code == policy_cli.EXIT_DENIED
    assert "rule:     none" in out
    assert "a read grant permits only GET, HEAD and OPTIONS, not DELETE" in out


def test_explain_refused_path_and_readings(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["policy", "explain", "--host", "crm.example", "--policy", str(good), "GET"]
    code, out, _err = run([*base, "/api/%2e%2e%2fadmin"], capsys)
    assert code == policy_cli.EXIT_DENIED
    assert "path:     refused: encoded slash or backslash (%2F) in path" in out
    code, out, _err = run([*base, "/api/admin;x/y"], capsys)
    assert code == policy_cli.EXIT_DENIED
    assert "readings: /api/admin;x/y, /api/admin/y" in out


def test_explain_unknown_host_and_bad_policy(
    good: Path, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(
        ["policy", "explain", "--host", "nope.example", "--policy", str(good), "GET", "/"], capsys
    )
    assert code == 1
    assert "no route serves host 'nope.example'" in err
    code, _out, err = run(
        ["policy", "explain", "--host", "crm.example", "--policy", str(bad), "GET", "/"], capsys
    )
    assert code == 1
    assert "routes[0].default: allow or deny" in err


def test_explain_uses_the_configs_policy_files(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "console_url: https://gw.example\ndata_dir: var\n"
        "listeners: [{address: 127.0.0.1, port: 8443}]\n"
        f"policy_files: [{good}]\n"
    )
    code, out, _err = run(
        ["policy", "explain", "--config", str(config), "--host", "crm.example", "GET", "/api"],
        capsys,
    )
    assert code == 0
    assert out.startswith("route:    crm")
    config.write_text("console_url: http://gw.example\n")
    code, _out, err = run(
        ["policy", "explain", "--config", str(config), "--host", "crm.example", "GET", "/api"],
        capsys,
    )
    assert code == 1
    assert "console_url: an https:// URL" in err


def test_gateway_entry_point_checks_the_demo_policy(project_root: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gateway.cli import main; sys.exit(main())",
            "policy",
            "check",
            "config/policies/demo.yaml",
        ],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 file(s), 1 route(s)")
