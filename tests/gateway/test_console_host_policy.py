"""No route may claim the console host: refused at start-up, on reload and by `config check`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import TlsFiles, parse_config
from gateway.policy_store import PolicyStore, load_gateway_policies
from gateway.tls import ensure_demo_tls
from policies.errors import PolicyError
from tests.gateway.test_config import run_check
from tests.gateway.test_policy_store import policy

CONSOLE = "gateway.test"


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(policy("acme.test"))
    return path


def test_a_route_naming_the_console_host_is_refused_with_file_and_line(routes: Path) -> None:
    routes.write_text(policy("acme.test", "GATEWAY.test"))
    with pytest.raises(PolicyError) as caught:
        load_gateway_policies([routes], CONSOLE)
    assert [str(p) for p in caught.value.problems] == [
        f"{routes}:8: route 'r1': hosts: a host other than the console host "
        "(the console origin is never routed) (got gateway.test)"
    ]
    with pytest.raises(PolicyError):
        PolicyStore([routes], console_host=CONSOLE, registry=CollectorRegistry())
    # Without a console host to compare with, the language alone accepts it.
    assert "gateway.test" in load_gateway_policies([routes], None).by_host


def test_a_console_url_with_a_trailing_dot_still_names_the_console_host(routes: Path) -> None:
    # Route hosts lose a trailing dot at load and `route_for` ignores one in Host.
    routes.write_text(policy("acme.test", CONSOLE))
    with pytest.raises(PolicyError) as caught:
        load_gateway_policies([routes], f"{CONSOLE.upper()}.")
    assert [p.value for p in caught.value.problems] == [CONSOLE]


def test_reload_naming_the_console_host_keeps_the_last_good_set(
    routes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    store = PolicyStore([routes], console_host=CONSOLE, registry=registry)
    good = store.current
    routes.write_text(policy("acme.test", CONSOLE))
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert store.reload() is False
    assert store.current is good
    assert set(store.current.by_host) == {"acme.test"}
    assert registry.get_sample_value("gateway_policy_reload_failures_total") == 1.0
    assert "console host" in caplog.text


@pytest.fixture
def console_routes(routes: Path) -> Path:
    routes.write_text(policy(CONSOLE))
    return routes


async def test_the_app_refuses_to_start(
    tmp_path: Path, console_routes: Path, redis_url: str
) -> None:
    config = parse_config(
        f"""console_url: https://{CONSOLE}:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{console_routes}]
""",
        "test.yaml",
    )
    runner = web.AppRunner(create_app(config, redis_url=redis_url))
    try:
        with pytest.raises(PolicyError, match="console host"):
            await runner.setup()
    finally:
        await runner.cleanup()


def test_config_check_reports_policy_problems(
    tmp_path: Path, routes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(policy("b.test").replace("default: deny", "default: maybe"))
    routes.write_text(policy("acme.test", CONSOLE))
    tls = TlsFiles(tmp_path / "tls/gw.crt", tmp_path / "tls/gw.key", tmp_path / "tls/ca.crt")
    ensure_demo_tls(tls, names=[CONSOLE])  # the listener's TLS files are checked too
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""console_url: https://{CONSOLE}:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{routes}, {broken}]
tls: {{cert_file: {tls.cert_file}, key_file: {tls.key_file}}}
"""
    )
    code, out, err = run_check(config, capsys)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert any(line.startswith(f"{broken}:6: routes[0].default: allow or deny") for line in lines)
    assert lines[-1] == f"{config}: config ok, policy files: 1 error(s)"
    # The language's own problems come first; the console-host check runs on a valid set.
    broken.write_text(policy("b.test"))
    code, out, err = run_check(config, capsys)
    assert code == 1
    assert f"{routes}:8: route 'r1': hosts" in err
    assert "console host" in err
    routes.write_text(policy("acme.test"))
    code, out, err = run_check(config, capsys)
    assert (code, err) == (0, "")
    assert out.endswith("2 route(s) from 2 policy file(s))\n")


def test_config_check_without_policy_files_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""console_url: https://{CONSOLE}:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
"""
    )
    code, _out, err = run_check(config, capsys)
    assert code == 1
    assert "at least one policy file" in err
