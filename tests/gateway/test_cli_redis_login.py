"""`gateway admin|mail --redis-url`: no password on the command line; the config's login."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway.redis_servers import PASSWORD, RedisProcess, start_redis

PASSWORD_ENV = "GW_TEST_CLI_REDIS_PASSWORD"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path_factory.mktemp("cli-protected"), "--requirepass", PASSWORD)
    yield server
    server.stop()


def config_file(tmp_path: Path, redis: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"console_url: https://gateway.localhost:8443\ndata_dir: {tmp_path / 'data'}\n"
        f"listeners: [{{address: 127.0.0.1, port: 8443}}]\n{redis}"
    )
    return path


@pytest.mark.parametrize(
    "command",
    [["admin", "list"], ["mail", "list"]],
)
@pytest.mark.parametrize(
    "url",
    [
        "redis://:{password}@127.0.0.1:{port}/0",
        "redis://default:{password}@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password={password}",
    ],
)
def test_a_password_on_the_command_line_is_refused(
    tmp_path: Path,
    protected: RedisProcess,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    url: str,
) -> None:
    # SECURITY: argv shows in `ps` to every local user and stays in shell history.
    given = url.format(password=PASSWORD, port=protected.port)
    name, action = command
    code = main([name, "--config", str(config_file(tmp_path)), "--redis-url", given, action])
    out, err = capsys.readouterr()
    assert code != 0
    assert "--redis-url: a URL without a password" in err
    assert "redis.password_env" in err
    assert PASSWORD not in out + err


@pytest.mark.parametrize("command", [["admin", "list"], ["mail", "list"]])
def test_redis_url_takes_the_login_from_the_config(
    tmp_path: Path,
    protected: RedisProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = config_file(
        tmp_path, f"redis: {{url: '{protected.url}', password_env: {PASSWORD_ENV}}}\n"
    )
    name, action = command
    url = f"redis://127.0.0.1:{protected.port}/3"  # another database of the same server
    code = main([name, "--config", str(config), "--redis-url", url, action])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert PASSWORD not in out


@pytest.mark.parametrize("command", [["admin", "list"], ["mail", "list"]])
def test_a_refused_login_is_a_clear_error_not_a_traceback(
    tmp_path: Path,
    protected: RedisProcess,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    name, action = command
    url = f"redis://127.0.0.1:{protected.port}/0"
    code = main([name, "--config", str(config_file(tmp_path)), "--redis-url", url, action])
    _, err = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in err
    assert "Redis refused the login" in err
