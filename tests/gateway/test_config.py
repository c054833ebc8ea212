# ruff: noqa: E501  (expected problem messages are quoted whole, as the loader prints them)
"""The gateway config loader: every kind of error, with file:line, and `gateway config check`."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import config as config_cli
from gateway.config import GatewayConfig, Listener, TlsFiles, load_config, parse_config
from gateway.errors import ConfigError
from gateway.tls import ensure_demo_tls

MINIMAL = """console_url: https://gateway.example:8443/
data_dir: var
listeners:
  - {address: 127.0.0.1, port: 8443}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    return [str(p) for p in caught.value.problems]


def test_minimal_config_and_defaults() -> None:
    config = parse_config(MINIMAL, "c.yaml")
    assert config.console_url == "https://gateway.example:8443"
    assert config.console_host == "gateway.example"
    assert config.listeners == (Listener("127.0.0.1", 8443, True),)
    assert config.redis.url is None
    assert config.redis.appendfsync == "always"
    assert config.smtp is None
    assert config.policy_files == ()
    assert config.limits.max_json_bytes == 65536
    assert config.sessions.mfa_max_age_s == 3600
    assert config.access_log is False
    assert config.source == "c.yaml"


def test_full_config_with_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SMTP_PASSWORD", "s3cret")
    text = MINIMAL + (
        "tls: {cert_file: t/c.crt, key_file: t/c.key, ca_file: t/ca.crt}\n"
        "redis: {url: 'redis://127.0.0.1:6390/0', appendfsync: everysec}\n"
        "policy_files: [p/a.yaml, /abs/b.yaml]\n"
        "trusted_proxies: [10.0.0.0/8, '::1']\n"
        "limits: {max_headers: 50}\n"
        "sessions: {idle_timeout_s: 600}\n"
        "smtp: {host: mail.example, port: 587, security: starttls, username: gw,"
        " password_env: GW_TEST_SMTP_PASSWORD, sender: gw@example}\n"
        "audit: {checkpoint_every_frames: 10, checkpoint_every_s: 1, segment_dir: seg}\n"
        "access_log: true\n"
    )
    config = parse_config(text, "c.yaml", base=Path("/srv/gw"))
    assert config.data_dir == Path("/srv/gw/var")
    assert config.tls.cert_file == Path("/srv/gw/t/c.crt")
    assert config.policy_files == (Path("/srv/gw/p/a.yaml"), Path("/abs/b.yaml"))
    assert config.redis.url == "redis://127.0.0.1:6390/0"
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )
    assert config.smtp is not None
    assert config.smtp.password == "s3cret"
    assert config.smtp.security == "starttls"
    assert config.audit.segment_dir == Path("/srv/gw/seg")
    assert config.audit.checkpoint_every_s == 1.0
    assert config.access_log is True


CONFIG_ERRORS: list[tuple[str, str]] = [
    # unknown keys
    (MINIMAL + "colour: blue\n", "c.yaml:5: colour: no such key; known: console_url, data_dir"),
    (MINIMAL + "redis: {host: x}\n", "c.yaml:5: redis.host: no such key; known: url, appendfsync"),
    (
        "console_url: https://g.example\ndata_dir: v\nlisteners: [{address: a, port: 1, tsl: true}]\n",
        "c.yaml:3: listeners[0].tsl: no such key; known: address, port, tls",
    ),
    # wrong types
    (MINIMAL + "access_log: 'yes'\n", "c.yaml:5: access_log: true or false (got 'yes')"),
    (MINIMAL + "policy_files: config/p.yaml\n", "c.yaml:5: policy_files: a list of file paths"),
    (MINIMAL + "limits: [1]\n", "c.yaml:5: limits: a mapping (got [1])"),
    (
        MINIMAL + "trusted_proxies: [not-an-ip]\n",
        "c.yaml:5: trusted_proxies[0]: an address or CIDR network (got 'not-an-ip')",
    ),
    (
        MINIMAL + "trusted_proxies: 10.0.0.0/8\n",
        "c.yaml:5: trusted_proxies: a list of addresses or CIDR networks",
    ),
    (
        MINIMAL + "redis: {url: 'http://x'}\n",
        "c.yaml:5: redis.url: null (embedded) or a redis://, rediss:// or unix:// URL (got 'http://x')",
    ),
    (
        MINIMAL + "redis: {url: 'redis://[::1'}\n",
        "c.yaml:5: redis.url: null (embedded) or a redis://",
    ),
    (
        MINIMAL + "redis: {appendfsync: never}\n",
        "c.yaml:5: redis.appendfsync: one of always, everysec (got 'never')",
    ),
    (
        MINIMAL + "smtp: {security: ssl}\n",
        "c.yaml:5: smtp.security: one of tls, starttls, plain (got 'ssl')",
    ),
    (MINIMAL + "data_dir: ''\n", "c.yaml:5: (syntax): valid YAML: duplicate key 'data_dir'"),
    (MINIMAL.replace("data_dir: var", "data_dir: ''"), "c.yaml:2: data_dir: a non-empty string"),
    (
        MINIMAL.replace("https://gateway.example:8443/", "http://gateway.example"),
        "c.yaml:1: console_url: an https:// URL with a host and no path (got 'http://gateway.example')",
    ),
    (
        MINIMAL.replace("https://gateway.example:8443/", "https://gateway.example/console"),
        "c.yaml:1: console_url: an https:// URL with a host and no path",
    ),
    (
        MINIMAL.replace("https://gateway.example:8443/", "'https://[::1'"),
        "c.yaml:1: console_url: an https:// URL with a host and no path",
    ),
    (
        MINIMAL.replace("https://gateway.example:8443/", "5"),
        "c.yaml:1: console_url: an https:// URL (got 5)",
    ),
    (
        MINIMAL.replace(
            "- {address: 127.0.0.1, port: 8443}", "- {address: 127.0.0.1, port: '8443'}"
        ),
        "c.yaml:4: listeners[0].port: an integer from 0 to 65535 (got '8443')",
    ),
    (
        MINIMAL.replace("- {address: 127.0.0.1, port: 8443}", "- 8443"),
        "c.yaml:4: listeners[0]: a mapping (got 8443)",
    ),
    (
        MINIMAL + "sessions: {idle_timeout_s: true}\n",
        "c.yaml:5: sessions.idle_timeout_s: an integer from 60 to 604800 (got True)",
    ),
    # out of range
    (
        MINIMAL.replace("port: 8443", "port: 70000"),
        "c.yaml:4: listeners[0].port: an integer from 0 to 65535 (got 70000)",
    ),
    (
        MINIMAL + "limits: {max_headers: 2}\n",
        "c.yaml:5: limits.max_headers: an integer from 8 to 1000 (got 2)",
    ),
    (
        MINIMAL + "sessions: {handoff_code_ttl_s: 3600}\n",
        "c.yaml:5: sessions.handoff_code_ttl_s: an integer from 5 to 300 (got 3600)",
    ),
    (
        MINIMAL + "audit: {checkpoint_every_s: 0}\n",
        "c.yaml:5: audit.checkpoint_every_s: a number from 0.1 to 86400 (got 0)",
    ),
    (MINIMAL + "smtp: {port: 0}\n", "c.yaml:5: smtp.port: an integer from 1 to 65535 (got 0)"),
    # missing required
    ("data_dir: v\nlisteners: [{address: a, port: 1}]\n", "c.yaml:1: console_url: required"),
    (
        "console_url: https://g.example\nlisteners: [{address: a, port: 1}]\n",
        "c.yaml:1: data_dir: required",
    ),
    ("console_url: https://g.example\ndata_dir: v\n", "c.yaml:1: listeners: required"),
    (
        "console_url: https://g.example\ndata_dir: v\nlisteners: []\n",
        "c.yaml:3: listeners: a non-empty list of listeners",
    ),
    (
        "console_url: https://g.example\ndata_dir: v\nlisteners: [{port: 1}]\n",
        "c.yaml:3: listeners[0].address: required",
    ),
    # environment secret
    (
        MINIMAL + "smtp: {password_env: GW_TEST_UNSET_VARIABLE}\n",
        "c.yaml:5: smtp.password_env: environment variable GW_TEST_UNSET_VARIABLE to be set (got 'GW_TEST_UNSET_VARIABLE')",
    ),
    (
        MINIMAL + "smtp: {password_env: ''}\n",
        "c.yaml:5: smtp.password_env: the name of an environment variable",
    ),
    (
        MINIMAL + "smtp: {password: hunter2}\n",
        "c.yaml:5: smtp.password: no such key; known: host, port, security, username, password_env, sender",
    ),
    # syntax, duplicates, aliases, shape of the document
    (
        "console_url: https://g.example\ndata_dir: [v\nlisteners: []\n",
        "c.yaml:3: (syntax): valid YAML",
    ),
    ("a: 1\n  b: 2\n", "c.yaml:2: (syntax): valid YAML"),
    (
        MINIMAL + "console_url: https://other.example\n",
        "c.yaml:5: (syntax): valid YAML: duplicate key 'console_url'",
    ),
    (
        MINIMAL + "x: &anchor {a: 1}\ny: *anchor\n",
        "c.yaml:1: (document): no YAML anchors or aliases",
    ),
    ("{1: a}\n", "c.yaml:1: (syntax): valid YAML: keys must be strings, got 1"),
    ("- a\n", "c.yaml:1: (document): a mapping (got ['a'])"),
    ("", "c.yaml:1: (document): a mapping"),
    (
        MINIMAL + "# " + "x" * (4 * 1024 * 1024) + "\n",
        "c.yaml:1: (document): at most 4194304 bytes",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CONFIG_ERRORS)
def test_every_config_error_kind(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_at_once() -> None:
    text = MINIMAL.replace("port: 8443", "port: -1") + "colour: x\naccess_log: 3\n"
    assert len(problems_of(text)) == 3


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 1
    assert problem.key == "(file)"
    assert problem.expected.startswith("a readable UTF-8 file")


def test_example_config_is_valid(project_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project_root)
    config = load_config(project_root / "config/gateway.yaml")
    assert isinstance(config, GatewayConfig)
    assert config.policy_files == (project_root / "config/policies/demo.yaml",)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
DOCS = st.dictionaries(
    st.sampled_from(
        [
            "console_url",
            "data_dir",
            "listeners",
            "tls",
            "redis",
            "policy_files",
            "limits",
            "sessions",
            "smtp",
            "audit",
            "trusted_proxies",
            "access_log",
            "x",
        ]
    ),
    st.recursive(
        SCALARS,
        lambda c: st.one_of(
            st.lists(c, max_size=3), st.dictionaries(st.text(max_size=12), c, max_size=3)
        ),
        max_leaves=10,
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(DOCS)
def test_loader_only_ever_raises_config_error(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_config(text, "c.yaml")
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = ()
    assert all(str(p).startswith("c.yaml:") for p in problems)


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="gateway")
    config_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["config", "check", str(path)])
    code: int = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  - {name: r, hosts: [a.example], upstream: 'http://127.0.0.1:9', org: o,"
        " default: deny, rules: []}\n"
    )
    tls = TlsFiles(tmp_path / "tls/gw.crt", tmp_path / "tls/gw.key", tmp_path / "tls/ca.crt")
    ensure_demo_tls(tls, names=["gateway.example"])  # the listener's TLS files are checked too
    good = tmp_path / "good.yaml"
    good.write_text(
        MINIMAL
        + f"policy_files: [{routes}]\n"
        + f"tls: {{cert_file: {tls.cert_file}, key_file: {tls.key_file}}}\n"
    )
    code, out, err = run_check(good, capsys)
    assert code == 0
    assert out == (
        f"{good}: ok (console https://gateway.example:8443, 1 listener(s), "
        "1 route(s) from 1 policy file(s))\n"
    )
    assert err == ""
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "colour: x\naccess_log: 3\n")
    code, out, err = run_check(bad, capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:5: colour: no such key; known: "
        + ", ".join(
            [
                "console_url",
                "data_dir",
                "listeners",
                "tls",
                "redis",
                "policy_files",
                "trusted_proxies",
                "limits",
                "sessions",
                "smtp",
                "audit",
                "access_log",
                "metrics",
            ]
        ),
        f"{bad}:6: access_log: true or false (got 3)",
        f"{bad}: 2 error(s)",
    ]
