"""`gateway audit … --config FILE`: the audit commands find the data directory, segment
directory, keys and Redis from the gateway config; flags given on the command line win."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit.keys import KeyDirectory
from audit.record import event_record
from audit.segment import MAGIC
from audit.writer import AuditWriter
from gateway import keys
from gateway.clock import ManualClock

ROOT = Path(__file__).resolve().parents[2]


async def gateway_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())", *args,
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(tmp: Path, redis_url: str) -> Path:
    path = tmp / "gateway.yaml"
    path.write_text(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
redis: {{url: "{redis_url}"}}
audit: {{segment_dir: {tmp / "segments"}}}
"""
    )
    return path


@pytest.fixture
async def trail(tmp_path: Path, redis: aioredis.Redis, redis_url: str, clock: ManualClock) -> Path:
    """A gateway config and three audited events in its Redis stream, signed with its keys."""
    config = write_config(tmp_path, redis_url)
    signer = KeyDirectory(tmp_path / "data" / "audit-keys").ensure(clock.now())
    writer = AuditWriter(
        redis,
        signer,
        stream=keys.audit_stream(),
        now=clock.now,
        last_checkpoint_key=keys.audit_last_checkpoint(),
    )
    await writer.open()
    for action in ("gateway.start", "access.filed", "access.approved"):
        await writer.append(event_record(action, at=clock.now(), category="gateway"))
    await writer.close()
    return config


async def test_collect_verify_export_and_keys_from_the_config(trail: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "elsewhere"  # no config/gateway.yaml here: only --config names one
    cwd.mkdir()
    code, _, err = await gateway_cli("audit", "collect", "--once", "--config", str(trail), cwd=cwd)
    assert code == 0, err
    segments = sorted((tmp_path / "segments").glob("*.seg"))
    assert segments
    code, out, err = await gateway_cli("audit", "verify", "--config", str(trail), cwd=cwd)
    assert code == 0, out + err
    code, out, err = await gateway_cli(
        "audit", "export", "--format", "jsonl", "--config", str(trail), cwd=cwd
    )
    assert code == 0, err
    actions = [json.loads(line)["event"]["action"] for line in out.splitlines()]
    assert "access.approved" in actions
    code, out, err = await gateway_cli("audit", "keys", "show", "--config", str(trail), cwd=cwd)
    assert code == 0, err
    assert len(json.loads(out)["keys"]) == 1


async def test_a_checkpoint_saved_from_the_config_is_expected_later(
    trail: Path, tmp_path: Path
) -> None:
    config = ("--config", str(trail))
    code, _, err = await gateway_cli("audit", "collect", "--once", *config, cwd=tmp_path)
    assert code == 0, err
    code, from_files, err = await gateway_cli("audit", "checkpoint", *config, cwd=tmp_path)
    assert code == 0, err
    code, from_redis, err = await gateway_cli(
        "audit", "checkpoint", "--from-redis", *config, cwd=tmp_path
    )
    assert code == 0, err
    saved = json.loads(from_files)
    assert {k: v for k, v in json.loads(from_redis).items() if k != "time"} == {
        k: v for k, v in saved.items() if k != "time"
    }
    path = tmp_path / "saved.json"
    path.write_text(from_files)
    code, out, err = await gateway_cli(
        "audit", "verify", "--expect-checkpoint", str(path), *config, cwd=tmp_path
    )
    assert code == 0, out + err
    for segment in (tmp_path / "segments").glob("*.seg"):
        segment.write_bytes(MAGIC)  # every frame gone, the files stay
    code, out, err = await gateway_cli(
        "audit", "verify", "--expect-checkpoint", str(path), *config, cwd=tmp_path
    )
    assert code == 1
    assert "checkpoint_missing" in out


async def test_explicit_flags_win_over_the_config(trail: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-segments"
    code, _, err = await gateway_cli(
        "audit", "collect", "--once", "--config", str(trail), "--segment-dir", str(other),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(other.glob("*.seg"))
    assert not (tmp_path / "segments").exists()
    # Every place given as a flag: no config is read at all, not even the default one.
    ring = tmp_path / "data" / "audit-keys" / "keyring.json"
    code, out, err = await gateway_cli(
        "audit", "verify", str(other), "--keyring", str(ring), cwd=tmp_path
    )
    assert code == 0, out + err


async def test_a_bad_or_missing_config_is_a_clear_error(trail: Path, tmp_path: Path) -> None:
    code, _, err = await gateway_cli("audit", "verify", cwd=tmp_path)
    assert code == 2
    assert "config/gateway.yaml" in err
    assert "--config" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("console_url: 7\n")
    code, _, err = await gateway_cli(
        "audit", "collect", "--once", "--config", str(broken), cwd=tmp_path
    )
    assert code == 2
    assert f"{broken}:1: console_url" in err
    assert not (tmp_path / "segments").exists()
