# ruff: noqa: E501  (expected problem messages are quoted whole, as the loader prints them)
"""The `redis` section: login from the environment, TLS files, Sentinel, and every refusal."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import config as config_cli
from gateway.config import MAX_SENTINEL_NODES, RedisSentinel, parse_config
from gateway.errors import ConfigError

MINIMAL = """console_url: https://gateway.example:8443/
data_dir: var
listeners:
  - {address: 127.0.0.1, port: 8443}
"""

PASSWORD_ENV = "GW_TEST_REDIS_PASSWORD"
SECRET = "s3cret-redis-password"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    monkeypatch.setenv("GW_TEST_SENTINEL_PASSWORD", "sentinel-secret")
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    monkeypatch.delenv("GW_TEST_UNSET_VARIABLE", raising=False)


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """Files the TLS keys name (existence is what the loader checks)."""
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    return tmp_path


def problems_of(text: str, base: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml", base=base)
    return [str(p) for p in caught.value.problems]


def test_url_with_login_from_the_environment_and_mutual_tls(pem: Path) -> None:
    config = parse_config(
        MINIMAL
        + "redis:\n"
        + "  url: rediss://redis.internal:6380/2\n"
        + "  username: gateway\n"
        + f"  password_env: {PASSWORD_ENV}\n"
        + "  ca_file: ca.crt\n"
        + "  client_cert_file: client.crt\n"
        + f"  client_key_file: {pem / 'client.key'}\n",
        "c.yaml",
        base=pem,
    )
    redis = config.redis
    assert redis.url == "rediss://redis.internal:6380/2"
    assert (redis.username, redis.password_env, redis.password) == (
        "gateway",
        PASSWORD_ENV,
        SECRET,
    )
    assert redis.ca_file == pem / "ca.crt"  # relative to the base, like every path
    assert redis.client_cert_file == pem / "client.crt"
    assert redis.client_key_file == pem / "client.key"
    assert redis.external
    assert redis.tls
    assert redis.sentinel is None
    # The secret never shows in a repr (logs, tracebacks).
    assert SECRET not in repr(config)
    assert PASSWORD_ENV in repr(config)


def test_sentinel_with_its_own_password_and_tls(pem: Path) -> None:
    config = parse_config(
        MINIMAL
        + "redis:\n"
        + "  sentinel:\n"
        + "    master: gwmaster\n"
        + "    nodes: ['10.0.0.1:26380', 'sentinel-b.internal:26381', '[::1]:26382']\n"
        + "    tls: true\n"
        + f"  password_env: {PASSWORD_ENV}\n"
        + "  sentinel_password_env: GW_TEST_SENTINEL_PASSWORD\n"
        + f"  ca_file: {pem / 'ca.crt'}\n",
        "c.yaml",
    )
    redis = config.redis
    assert redis.url is None
    assert redis.sentinel == RedisSentinel(
        "gwmaster",
        (("10.0.0.1", 26380), ("sentinel-b.internal", 26381), ("::1", 26382)),
        tls=True,
    )
    assert (redis.password, redis.sentinel_password) == (SECRET, "sentinel-secret")
    assert redis.external
    assert redis.tls
    assert "sentinel-secret" not in repr(config)


def test_embedded_default_is_unchanged() -> None:
    redis = parse_config(MINIMAL + "redis: {url: null, appendfsync: everysec}\n", "c.yaml").redis
    assert (redis.url, redis.sentinel, redis.password, redis.ca_file) == (None, None, None, None)
    assert not redis.external
    assert not redis.tls
    assert redis.appendfsync == "everysec"


def test_a_password_in_the_url_is_refused_without_echoing_it() -> None:
    found = problems_of(MINIMAL + "redis: {url: 'redis://gw:hunter2@redis.internal:6379/0'}\n")
    assert found == [
        "c.yaml:5: redis.url: a URL without a password: name the environment variable holding it in redis.password_env (got 'redis://***@redis.internal:6379/0')"
    ]
    assert not any("hunter2" in p for p in found)


REDIS_ERRORS: list[tuple[str, str]] = [
    (
        "redis: {url: 'redis://:hunter2@r:6379'}\n",
        "c.yaml:5: redis.url: a URL without a password: name the environment variable holding it in redis.password_env",
    ),
    (
        "redis: {url: 'redis://r:6379/0?password=hunter2'}\n",
        "c.yaml:5: redis.url: a URL without a password",
    ),
    (
        "redis: {url: 'rediss://r:6379/0?ssl_cert_reqs=none'}\n",
        "c.yaml:5: redis.url: URL options only among db, socket_connect_timeout, socket_timeout (got 'rediss://r:6379/0?ssl_cert_reqs=none')",
    ),
    (
        "redis: {url: 'rediss://r:6379/0?ssl_check_hostname=false'}\n",
        "c.yaml:5: redis.url: URL options only among db",
    ),
    (
        "redis:\n  url: redis://r:6379\n  sentinel: {master: m, nodes: ['a:1']}\n",
        "c.yaml:7: redis.sentinel: either redis.url or redis.sentinel, not both",
    ),
    (
        "redis: {sentinel: {master: m, nodes: []}}\n",
        'c.yaml:5: redis.sentinel.nodes: a list of 1 to 32 "host:port" strings',
    ),
    (
        "redis: {sentinel: {master: m, nodes: 'a:1'}}\n",
        "c.yaml:5: redis.sentinel.nodes: a list of 1 to 32 \"host:port\" strings (got 'a:1')",
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['a:1', 'b']}}\n",
        'c.yaml:5: redis.sentinel.nodes[1]: "host:port" with a port from 1 to 65535 ("[v6]:port" for IPv6) (got \'b\')',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['a:0']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port" with a port from 1 to 65535',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['a:65536']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port" with a port from 1 to 65535 ("[v6]:port" for IPv6) (got \'a:65536\')',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['::1:26379']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port"',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['[zz]:26379']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port"',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['a:+1']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port"',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['a:２６３７９']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port"',
    ),
    (
        "redis: {sentinel: {master: m, nodes: [':26379']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port"',
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['u@a:26379']}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port"',
    ),
    (
        "redis: {sentinel: {master: m, nodes: [26379]}}\n",
        'c.yaml:5: redis.sentinel.nodes[0]: "host:port" with a port from 1 to 65535 ("[v6]:port" for IPv6) (got 26379)',
    ),
    (
        "redis: {sentinel: {nodes: ['a:1']}}\n",
        "c.yaml:5: redis.sentinel.master: required",
    ),
    (
        "redis: {sentinel: {master: 'my master', nodes: ['a:1']}}\n",
        "c.yaml:5: redis.sentinel.master: a master name (1 to 255 printable characters, no spaces)",
    ),
    (
        "redis: {sentinel: {master: m, nodes: ['a:1'], port: 1}}\n",
        "c.yaml:5: redis.sentinel.port: no such key; known: master, nodes, tls",
    ),
    (
        "redis: {sentinel: [a]}\n",
        "c.yaml:5: redis.sentinel: a mapping (got ['a'])",
    ),
    (
        "redis: {url: 'redis://r:6379', password_env: GW_TEST_UNSET_VARIABLE}\n",
        "c.yaml:5: redis.password_env: environment variable GW_TEST_UNSET_VARIABLE set, not empty (got 'GW_TEST_UNSET_VARIABLE')",
    ),
    (
        "redis: {url: 'redis://r:6379', password_env: GW_TEST_EMPTY}\n",
        "c.yaml:5: redis.password_env: environment variable GW_TEST_EMPTY set, not empty",
    ),
    (
        "redis: {url: 'redis://r:6379', password_env: ''}\n",
        "c.yaml:5: redis.password_env: the name of an environment variable",
    ),
    (
        "redis: {url: 'redis://r:6379', password_env: 'A=B'}\n",
        # not echoed: what stands where a name belongs may be the secret itself
        "c.yaml:5: redis.password_env: the name of an environment variable",
    ),
    (
        "redis: {url: 'redis://r:6379', password: hunter2}\n",
        "c.yaml:5: redis.password: no such key; known: url, appendfsync, sentinel, username, password_env",
    ),
    (
        "redis:\n  sentinel: {master: m, nodes: ['a:1']}\n  sentinel_password_env: GW_TEST_UNSET_VARIABLE\n",
        "c.yaml:7: redis.sentinel_password_env: environment variable GW_TEST_UNSET_VARIABLE set, not empty",
    ),
    (
        f"redis: {{url: 'redis://r:6379', sentinel_password_env: {PASSWORD_ENV}}}\n",
        "c.yaml:5: redis.sentinel_password_env: only with redis.sentinel",
    ),
    (
        f"redis: {{password_env: {PASSWORD_ENV}}}\n",
        "c.yaml:5: redis.password_env: only with redis.url or redis.sentinel (not the embedded)",
    ),
    (
        "redis: {username: gateway}\n",
        "c.yaml:5: redis.username: only with redis.url or redis.sentinel",
    ),
    (
        "redis: {url: 'rediss://r:6379', ca_file: /nonexistent/ca.crt}\n",
        "c.yaml:5: redis.ca_file: an existing file (got '/nonexistent/ca.crt')",
    ),
    (
        "redis: {url: 'rediss://r:6379', client_cert_file: /nonexistent/c.crt, client_key_file: /nonexistent/c.key}\n",
        "c.yaml:5: redis.client_key_file: an existing file (got '/nonexistent/c.key')",
    ),
]


@pytest.mark.parametrize(("redis", "expected"), REDIS_ERRORS)
def test_every_redis_error_kind(redis: str, expected: str) -> None:
    found = problems_of(MINIMAL + redis)
    assert any(p.startswith(expected) for p in found), found


def test_tls_files_need_tls_and_come_in_pairs(pem: Path) -> None:
    found = problems_of(
        MINIMAL
        + "redis:\n"
        + "  url: redis://r:6379\n"
        + f"  ca_file: {pem / 'ca.crt'}\n"
        + f"  client_cert_file: {pem / 'client.crt'}\n",
    )
    assert found == [
        "c.yaml:7: redis.ca_file: only with a rediss:// URL or redis.sentinel.tls: true",
        "c.yaml:8: redis.client_cert_file: only with a rediss:// URL or redis.sentinel.tls: true",
        "c.yaml:8: redis.client_key_file: required with redis.client_cert_file",
    ]
    sentinel_without_tls = problems_of(
        MINIMAL
        + "redis:\n"
        + "  sentinel: {master: m, nodes: ['a:1']}\n"
        + f"  ca_file: {pem / 'ca.crt'}\n",
    )
    assert sentinel_without_tls == [
        "c.yaml:7: redis.ca_file: only with a rediss:// URL or redis.sentinel.tls: true"
    ]


def test_relative_tls_files_are_looked_for_under_the_base(pem: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    text = MINIMAL + "redis: {url: 'rediss://r:6379', ca_file: ca.crt}\n"
    assert parse_config(text, "c.yaml", base=pem).redis.ca_file == pem / "ca.crt"
    [problem] = problems_of(text, base=elsewhere)
    assert problem.startswith(f"c.yaml:5: redis.ca_file: an existing file (got '{elsewhere}")


def test_too_many_sentinel_nodes_and_every_problem_at_once() -> None:
    nodes = ", ".join(f"'s{i}:26379'" for i in range(MAX_SENTINEL_NODES + 1))
    found = problems_of(
        MINIMAL
        + f"redis:\n  sentinel: {{master: m, nodes: [{nodes}]}}\n"
        + "  password_env: GW_TEST_UNSET_VARIABLE\n"
    )
    assert len(found) == 2
    assert found[0].startswith('c.yaml:6: redis.sentinel.nodes: a list of 1 to 32 "host:port"')
    assert found[1].startswith("c.yaml:7: redis.password_env: environment variable")


def test_config_check_names_file_and_line_and_hides_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text(MINIMAL + "redis:\n  url: 'rediss://gw:hunter2@redis.internal:6380'\n")
    parser = argparse.ArgumentParser(prog="gateway")
    config_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["config", "check", str(bad)])
    code: int = args.handler(args)
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:6: redis.url: a URL without a password: name the environment variable "
        "holding it in redis.password_env (got 'rediss://***@redis.internal:6380')",
        f"{bad}: 1 error(s)",
    ]
    assert "hunter2" not in err
