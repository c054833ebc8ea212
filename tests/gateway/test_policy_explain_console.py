"""`gateway policy explain` refuses a route naming the console host, as `gateway run` does.

The console host comes from the gateway config: the one `--config` names, or by default
config/gateway.yaml of the working directory when it exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policies.test_cli import GOOD, run

CONSOLE = "gw.example"


def policy_naming(*hosts: str) -> str:
    return GOOD.replace("hosts: [crm.example]", f"hosts: [{', '.join(hosts)}]")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    policy = tmp_path / "routes.yaml"
    policy.write_text(policy_naming("crm.example", "GW.example."))
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"console_url: https://{CONSOLE}:8443\ndata_dir: var\n"
        "listeners: [{address: 127.0.0.1, port: 8443}]\n"
        f"policy_files: [{policy}]\n"
    )
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of our own (the default config is relative to it)."""
    directory = tmp_path / "cwd"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def test_explain_refuses_a_route_naming_the_console_host(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["policy", "explain", "--config", str(config), "--host", "crm.example", "GET", "/api"]
    code, out, err = run(argv, capsys)
    assert (code, out) == (1, "")
    assert "route 'crm': hosts" in err
    assert "the console origin is never routed" in err
    assert err.splitlines()[-1] == "1 error(s)"


def test_explain_with_policy_files_and_a_config_refuses_too(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "other.yaml"
    policy.write_text(policy_naming("crm.example", CONSOLE))
    argv = ["policy", "explain", "--config", str(config), "--policy", str(policy)]
    code, out, err = run([*argv, "--host", "crm.example", "GET", "/api"], capsys)
    assert (code, out) == (1, "")
    assert f"{policy}:2: route 'crm': hosts" in err
    policy.write_text(policy_naming("crm.example"))
    code, out, err = run([*argv, "--host", "crm.example", "GET", "/api"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("route:    crm")


def test_explain_of_the_console_host_says_it_is_never_routed(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "other.yaml"
    policy.write_text(policy_naming("crm.example"))
    argv = ["policy", "explain", "--config", str(config), "--policy", str(policy)]
    code, out, err = run([*argv, "--host", "GW.Example:8443", "GET", "/"], capsys)
    assert (code, out) == (1, "")
    assert err.strip() == (
        f"host 'GW.Example:8443' is the console origin ({CONSOLE}): "
        "the gateway serves its console there, never a route"
    )


def test_the_default_config_gives_the_console_host(
    config: Path, elsewhere: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "other.yaml"
    policy.write_text(policy_naming("crm.example", CONSOLE))
    argv = ["policy", "explain", "--policy", str(policy), "--host", "crm.example", "GET", "/api"]
    # no config/gateway.yaml here: the policy language alone judges
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "console host unknown" in err
    (elsewhere / "config").mkdir()
    (elsewhere / "config" / "gateway.yaml").write_text(config.read_text())
    code, out, err = run(argv, capsys)
    assert (code, out) == (1, "")
    assert "the console origin is never routed" in err


def test_a_broken_config_named_explicitly_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(GOOD)
    broken = tmp_path / "broken.yaml"
    broken.write_text("console_url: http://gw.example\n")
    argv = ["policy", "explain", "--config", str(broken), "--policy", str(policy)]
    code, out, err = run([*argv, "--host", "crm.example", "GET", "/api"], capsys)
    assert (code, out) == (1, "")
    assert "console_url: an https:// URL" in err
