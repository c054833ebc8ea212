"""The audit collector reaching a Redis that needs a login, with no password on the command
line: `python -m audit collect --redis-password-env NAME` and `gateway audit collect
--config FILE` (the config's `redis.username`/`password_env`)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit.keys import KeyDirectory
from audit.record import event_record
from audit.writer import AuditWriter
from gateway import keys
from gateway.clock import ManualClock
from tests.gateway.redis_servers import (
    ACL_PASSWORD,
    ACL_USER,
    PASSWORD,
    RedisProcess,
    make_pki,
    start_redis,
)

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = "GW_TEST_AUDIT_REDIS_PASSWORD"


MAINS = {
    "audit": "import sys; from audit.cli import main; sys.exit(main())",
    "gateway": "import sys; from gateway.cli import main; sys.exit(main())",
}


async def run(program: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MAINS[program], *args,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(
        tmp_path_factory.mktemp("protected"),
        *("--requirepass", PASSWORD, "--user", ACL_USER, "on", f">{ACL_PASSWORD}"),
        *("~*", "&*", "+@all"),
    )
    yield server
    server.stop()


@pytest.fixture
async def frames(
    protected: RedisProcess, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[aioredis.Redis]:
    """Three signed frames in the protected server's audit stream."""
    client = aioredis.Redis(port=protected.port, password=PASSWORD)
    await client.flushall()
    signer = KeyDirectory(tmp_path / "data" / "audit-keys").ensure(clock.now())
    writer = AuditWriter(client, signer, stream=keys.audit_stream(), now=clock.now)
    await writer.open()
    for action in ("gateway.start", "access.filed", "access.approved"):
        await writer.append(event_record(action, at=clock.now(), category="gateway"))
    await writer.close()
    yield client
    await client.aclose()


def collect_args(protected: RedisProcess, segments: Path, *extra: str) -> list[str]:
    return [
        "collect", "--once", "--redis-url", protected.url, "--stream", keys.audit_stream(),
        "--segment-dir", str(segments), *extra,
    ]  # fmt: skip


async def test_collect_with_password_from_the_environment(
    protected: RedisProcess, frames: aioredis.Redis, tmp_path: Path
) -> None:
    segments = tmp_path / "segments"
    login = ("--redis-username", ACL_USER, "--redis-password-env", VARIABLE)
    code, err = await run(
        "audit", *collect_args(protected, segments, *login), env={VARIABLE: ACL_PASSWORD}
    )
    assert code == 0, err
    assert "collected" in err
    assert sorted(segments.glob("*.seg"))
    assert ACL_PASSWORD not in err


async def test_collect_refuses_a_missing_password_or_a_wrong_one(
    protected: RedisProcess, frames: aioredis.Redis, tmp_path: Path
) -> None:
    segments = tmp_path / "segments"
    before = await frames.xlen(keys.audit_stream())
    code, err = await run(
        "audit", *collect_args(protected, segments, "--redis-password-env", VARIABLE)
    )
    assert code == 2
    assert f"environment variable {VARIABLE} is not set" in err
    code, err = await run(
        "audit",
        *collect_args(protected, segments, "--redis-password-env", VARIABLE),
        env={VARIABLE: "wrong password"},
    )
    assert code == 1
    assert "collect:" in err
    assert "wrong password" not in err
    assert not list(segments.glob("*.seg"))
    assert await frames.xlen(keys.audit_stream()) == before  # nothing taken


async def test_ca_file_needs_rediss_and_must_exist(protected: RedisProcess, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    segments = tmp_path / "segments"
    code, err = await run(
        "audit", *collect_args(protected, segments, "--redis-ca-file", str(pki.ca))
    )
    assert (code, err.strip()) == (2, "collect: --redis-ca-file needs a rediss:// URL")
    args = collect_args(protected, segments, "--redis-ca-file", str(tmp_path / "none.crt"))
    args[args.index("--redis-url") + 1] = f"rediss://127.0.0.1:{protected.port}/0"
    code, err = await run("audit", *args)
    assert code == 2
    assert "--redis-ca-file: no such file" in err


async def test_replay_follow_refuses_an_unset_password_variable(
    protected: RedisProcess,
) -> None:
    code, err = await run(
        "audit", "replay", "--follow", "--redis-url", protected.url,
        "--redis-password-env", VARIABLE, "--stream", keys.audit_stream(),
    )  # fmt: skip
    assert code == 2
    assert f"environment variable {VARIABLE} is not set" in err


async def test_gateway_audit_collect_takes_the_login_from_the_config(
    protected: RedisProcess, frames: aioredis.Redis, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
redis: {{url: "{protected.url}", username: {ACL_USER}, password_env: {VARIABLE}}}
audit: {{segment_dir: {tmp_path / "segments"}}}
"""
    )
    code, err = await run(
        "gateway", "audit", "collect", "--once", "--config", str(config),
        env={VARIABLE: ACL_PASSWORD},
    )  # fmt: skip
    assert code == 0, err
    assert sorted((tmp_path / "segments").glob("*.seg"))
    code, err = await run(
        "gateway", "audit", "verify", "--config", str(config), env={VARIABLE: ACL_PASSWORD}
    )
    assert code == 0, err
