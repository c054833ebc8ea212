"""`gateway admin` as a real subprocess against the test Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import keys

_MAIN = "import sys; from gateway.cli import main; sys.exit(main())"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"console_url: https://gateway.localhost:8443\ndata_dir: {tmp_path / 'data'}\n"
        "listeners: [{address: 127.0.0.1, port: 8443}]\n"
    )
    return path


def admin(
    tmp_path: Path, redis_url: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _MAIN,
            "admin",
            "--config",
            str(_config(tmp_path)),
            "--redis-url",
            redis_url,
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_import_demo_directory_twice(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, project_root: Path
) -> None:
    demo = str(project_root / "config" / "demo-directory.yaml")
    first = admin(tmp_path, redis_url, "import", demo)
    assert first.returncode == 0, first.stderr
    assert "created: staff:sam" in first.stdout
    assert "enrolment token for member:acme:bob" in first.stdout
    second = admin(tmp_path, redis_url, "import", demo)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout
    assert "enrolment token" not in second.stdout
    assert second.stdout.count("unchanged:") == 3
    key_file = tmp_path / "data" / "keys" / "totp.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    listing = admin(tmp_path, redis_url, "list")
    assert "member:acme:bob <bob@acme.example> active (not enrolled)" in listing.stdout


async def test_create_reset_disable(tmp_path: Path, redis_url: str, redis: aioredis.Redis) -> None:
    assert admin(tmp_path, redis_url, "org", "create", "acme", "--name", "Acme").returncode == 0
    made = admin(
        tmp_path,
        redis_url,
        "member",
        "create",
        "acme",
        "carol",
        "--email",
        "carol@acme.example",
        "--role",
        "admin",
        "--password-stdin",
        stdin="carol-secret-pw\n",
    )
    assert made.returncode == 0, made.stderr
    assert "carol-secret-pw" not in made.stdout
    assert "enrolment token for member:acme:carol" in made.stdout
    stored = await redis.hget(keys.member("acme", "carol"), "password_hash")
    assert stored is not None
    assert isinstance(stored, bytes)
    assert stored.startswith(b"scrypt$")

    await redis.sadd(keys.principal_sessions("member:acme:carol"), "sid0")
    await redis.set(keys.console_session("sid0"), "{}")
    generated = admin(tmp_path, redis_url, "password", "reset", "member:acme:carol")
    assert "password for member:acme:carol (shown once): " in generated.stdout
    assert "ended 1 session(s)" in generated.stdout
    assert not await redis.exists(keys.console_session("sid0"))

    await redis.sadd(keys.principal_sessions("member:acme:carol"), "sid2")
    await redis.set(keys.console_session("sid2"), "{}")
    totp_reset = admin(tmp_path, redis_url, "totp", "reset", "member:acme:carol")
    assert totp_reset.returncode == 0
    assert "ended 1 session(s)" in totp_reset.stdout
    assert not await redis.exists(keys.console_session("sid2"))

    await redis.sadd(keys.principal_sessions("member:acme:carol"), "sid1")
    await redis.set(keys.console_session("sid1"), "{}")
    disabled = admin(tmp_path, redis_url, "disable", "member:acme:carol")
    assert "ended 1 session(s)" in disabled.stdout
    assert not await redis.exists(keys.console_session("sid1"))
    assert await redis.hget(keys.member("acme", "carol"), "disabled") == b"1"


@pytest.mark.parametrize(
    "args",
    [
        ("staff", "create", "bad id", "--email", "a@b.example", "--name", "A"),
        ("disable", "staff:nobody"),
        ("totp", "reset", "not-a-principal"),
        ("member", "create", "noorg", "x", "--email", "x@y.example"),
    ],
)
async def test_bad_input_exits_1_and_writes_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis, args: tuple[str, ...]
) -> None:
    result = admin(tmp_path, redis_url, *args, stdin="a-good-password\n")
    assert result.returncode == 1
    assert result.stderr.startswith("error:")
    assert await redis.dbsize() == 0


async def test_bad_directory_reports_all_and_imports_nothing(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("staff:\n  - {id: 'a b', email: nope, name: A}\n")
    result = admin(tmp_path, redis_url, "import", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: staff[0].id" in result.stderr
    assert "nothing was imported" in result.stderr
    assert await redis.dbsize() == 0


def test_password_never_a_command_line_argument(tmp_path: Path, redis_url: str) -> None:
    result = admin(tmp_path, redis_url, "password", "reset", "staff:sam", "--password", "x")
    assert result.returncode == 2


def test_embedded_redis_when_no_url(tmp_path: Path, project_root: Path) -> None:
    """No Redis URL anywhere: the command runs the gateway's own embedded Redis (AOF on)."""
    config = _config(tmp_path)
    demo = str(project_root / "config" / "demo-directory.yaml")
    base = [sys.executable, "-c", _MAIN, "admin", "--config", str(config)]
    imported = subprocess.run(
        [*base, "import", demo], capture_output=True, text=True, timeout=60, check=False
    )
    assert imported.returncode == 0, imported.stderr
    listed = subprocess.run(
        [*base, "list"], capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "staff:sam <sam@vendor.example> active" in listed.stdout
    assert (tmp_path / "data" / "redis").is_dir()
