# ruff: noqa: E501  (expected problem messages are quoted whole, as the loader prints them)
"""Config values that would quietly weaken the gateway are refused, and no secret is echoed."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

MINIMAL = """console_url: https://gateway.example:8443/
data_dir: var
listeners:
  - {address: 127.0.0.1, port: 8443}
"""
SECRET = "hunter2-not-for-logs"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("host", ["mail.example", "10.0.0.25", "0.0.0.0", "2001:db8::25"])
def test_plain_smtp_only_to_a_loopback_catcher(host: str) -> None:
    # Approval links and SMTP logins would cross the network in clear.
    found = problems_of(MINIMAL + f"smtp: {{host: '{host}', port: 25, security: plain}}\n")
    assert found == [
        "c.yaml:5: smtp.security: tls or starttls for a host other than loopback (plain is for a local catcher only) (got 'plain')"
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost", "LOCALHOST"])
def test_plain_smtp_to_loopback_is_accepted(host: str) -> None:
    config = parse_config(MINIMAL + f"smtp: {{host: '{host}', port: 8025, security: plain}}\n", "c")
    assert config.smtp is not None
    assert (config.smtp.host, config.smtp.security) == (host, "plain")


def test_plain_smtp_to_the_default_host_is_the_demo_catcher() -> None:
    # The default host is loopback: plain there is the demo's catcher and stays allowed.
    config = parse_config(MINIMAL + "smtp: {port: 8025, security: plain}\n", "c")
    assert config.smtp is not None
    assert config.smtp.host == "127.0.0.1"


def test_an_empty_smtp_password_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    found = problems_of(MINIMAL + "smtp: {username: gw, password_env: GW_TEST_EMPTY}\n")
    assert found == [
        "c.yaml:5: smtp.password_env: environment variable GW_TEST_EMPTY set, not empty (got 'GW_TEST_EMPTY')"
    ]


def test_the_smtp_password_stays_out_of_the_config_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SMTP_PASSWORD", SECRET)
    config = parse_config(
        MINIMAL + "smtp: {host: mail.example, username: gw, password_env: GW_TEST_SMTP_PASSWORD}\n",
        "c.yaml",
    )
    assert config.smtp is not None
    assert config.smtp.password == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config.smtp)


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{SECRET}@r:6379",
        f"redis+sentinel://gw:{SECRET}@r:26379",
        f"{SECRET}@r:6379",
    ],
)
def test_a_refused_redis_url_never_echoes_its_password(url: str) -> None:
    found = problems_of(MINIMAL + f"redis: {{url: '{url}'}}\n")
    assert len(found) == 1
    assert found[0].startswith("c.yaml:5: redis.url: null (embedded) or a redis://")
    assert SECRET not in found[0]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("db=abc", "redis.url: db: an integer from 0 to 65535 (got 'abc')"),
        ("db=-1", "redis.url: db: an integer from 0 to 65535 (got '-1')"),
        ("db=99999999999999999999", "redis.url: db: an integer from 0 to 65535"),
        (
            "socket_timeout=0",
            "redis.url: socket_timeout: seconds, more than 0 and at most 300 (got '0')",
        ),
        ("socket_timeout=-1", "redis.url: socket_timeout: seconds, more than 0 and at most 300"),
        ("socket_timeout=inf", "redis.url: socket_timeout: seconds, more than 0 and at most 300"),
        ("socket_timeout=nan", "redis.url: socket_timeout: seconds, more than 0 and at most 300"),
        ("socket_connect_timeout=1e9", "redis.url: socket_connect_timeout: seconds, more than 0"),
        ("socket_timeout=", "redis.url: socket_timeout: seconds, more than 0 and at most 300"),
        ("db=1&db=2", "redis.url: db: given once (got ['1', '2'])"),
    ],
)
def test_redis_url_options_are_checked(query: str, expected: str) -> None:
    found = problems_of(MINIMAL + f"redis: {{url: 'redis://r:6379/0?{query}'}}\n")
    assert any(p.startswith(f"c.yaml:5: {expected}") for p in found), found


def test_sane_redis_url_options_are_kept() -> None:
    url = "redis://r:6379?db=3&socket_timeout=2.5&socket_connect_timeout=1"
    config = parse_config(MINIMAL + f"redis: {{url: '{url}'}}\n", "c.yaml")
    assert config.redis.url == url


@pytest.mark.parametrize(
    "console_url",
    [
        "https://gateway.example?next=/x",
        "https://gateway.example#top",
        "https://admin@gateway.example",
        "https://gateway.example:99999",
        "https://gateway.example:0",
    ],
)
def test_a_console_url_with_more_than_an_origin_is_refused(console_url: str) -> None:
    text = MINIMAL.replace("https://gateway.example:8443/", console_url)
    found = problems_of(text)
    assert found == [
        f"c.yaml:1: console_url: an https:// URL with a host and no path (got '{console_url}')"
    ]


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "10.0.0.0/0"])
def test_trusting_every_address_as_a_proxy_is_refused(network: str) -> None:
    # Every client could then name its own address in X-Forwarded-For.
    found = problems_of(MINIMAL + f"trusted_proxies: [10.0.0.0/8, '{network}']\n")
    assert found == [
        f"c.yaml:5: trusted_proxies[1]: the proxies' own addresses or networks, not every address (got '{network}')"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + 'policy_files: ["p\\0.yaml"]\n', "c.yaml:5: policy_files: a list of file paths"),
        (
            MINIMAL.replace("data_dir: var", 'data_dir: "v\\0ar"'),
            "c.yaml:2: data_dir: a file path without NUL bytes",
        ),
        (
            MINIMAL + 'tls: {cert_file: "c\\0.crt"}\n',
            "c.yaml:5: tls.cert_file: a file path without NUL",
        ),
        (MINIMAL + "tls: {key_file: ''}\n", "c.yaml:5: tls.key_file: a non-empty string"),
    ],
)
def test_a_path_with_a_nul_byte_is_a_config_error_not_a_crash(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("smtp: {{host: mail.example, password_env: '{secret}'}}", "smtp.password_env"),
        ("redis: {{url: 'redis://r:6379', password_env: '{secret}'}}", "redis.password_env"),
        (
            "redis: {{sentinel: {{master: m, nodes: ['a:1']}}, sentinel_password_env: '{secret}'}}",
            "redis.sentinel_password_env",
        ),
        ("redis: {{url: 'redis://r:6379', password_env: 'pw={secret}'}}", "redis.password_env"),
    ],
)
def test_a_secret_written_in_place_of_its_variable_name_is_not_echoed(
    section: str, key: str
) -> None:
    # The classic slip: the password itself where the variable's name belongs.
    found = problems_of(MINIMAL + section.format(secret=SECRET) + "\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"c.yaml:5: {key}: ")
    assert SECRET not in found[0]


def test_a_variable_name_is_still_named_when_it_is_unset() -> None:
    found = problems_of(MINIMAL + "smtp: {host: mail.example, password_env: GW_TEST_UNSET_X}\n")
    assert found == [
        "c.yaml:5: smtp.password_env: environment variable GW_TEST_UNSET_X to be set (got 'GW_TEST_UNSET_X')"
    ]


def test_a_sentinel_node_with_a_login_is_refused_without_echoing_it() -> None:
    found = problems_of(
        MINIMAL + f"redis: {{sentinel: {{master: m, nodes: ['gw:{SECRET}@sentinel-a:26379']}}}}\n"
    )
    assert len(found) == 1
    assert found[0].startswith('c.yaml:5: redis.sentinel.nodes[0]: "host:port"')
    assert "***@sentinel-a:26379" in found[0]
    assert SECRET not in found[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender", '"gw@vendor.example\\r\\nBcc: everyone@example.com"'),
        ("sender", '"gw@vendor.example\\nX-Evil: 1"'),
        ("host", '"mail.example\\r\\nRCPT TO:<x@example.com>"'),
        ("username", '"gw\\u0000"'),
        ("sender", "'" + "a" * 321 + "'"),
    ],
)
def test_smtp_words_are_one_printable_line(field: str, value: str) -> None:
    # A line break in the sender would add headers to every approval mail.
    found = problems_of(MINIMAL + f"smtp:\n  {field}: {value}\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"c.yaml:6: smtp.{field}: a non-empty line of printable text")
