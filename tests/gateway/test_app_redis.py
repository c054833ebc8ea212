"""The embedded redis-server started by the app outlives the loop's worker threads.

The kernel's parent-death signal (PR_SET_PDEATHSIG) follows the THREAD that spawned the
child: a server spawned from a default-executor thread dies when that thread retires.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web
from redis.exceptions import RedisError

from gateway.app import REDIS, create_app
from gateway.config import GatewayConfig, parse_config
from gateway.embedded_redis import find_redis_server

POLICY = """routes:
  - name: acme
    hosts: [acme.test]
    upstream: http://127.0.0.1:1
    org: acme
    default: allow
    rules: []
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status.lower()


def _embedded_config(tmp_path: Path) -> GatewayConfig:
    """A config without a Redis URL: the app runs its own redis-server."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return parse_config(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{policy}]
""",
        "test.yaml",
    )


async def test_embedded_redis_survives_retired_executor_threads(tmp_path: Path) -> None:
    config = _embedded_config(tmp_path)
    assert config.redis.url is None
    loop = asyncio.get_running_loop()
    first = ThreadPoolExecutor(max_workers=4)
    loop.set_default_executor(first)
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        client = runner.app[REDIS]
        info = await client.info("server")
        pid = int(info["process_id"])
        assert pid != os.getpid()
        assert _alive(pid)
        # Keep every worker thread of the start-up executor busy, then retire them all.
        await asyncio.gather(*(asyncio.to_thread(sum, range(1000)) for _ in range(64)))
        first.shutdown(wait=True)
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        await asyncio.gather(*(asyncio.to_thread(sum, range(1000)) for _ in range(16)))
        await asyncio.sleep(0.5)
        assert _alive(pid), "the embedded redis-server died with a retired worker thread"
        assert await client.ping()
        assert int((await client.info("server"))["process_id"]) == pid
    finally:
        await runner.cleanup()
    assert not _alive(pid)


async def test_a_dead_embedded_redis_is_restarted_with_its_data(tmp_path: Path) -> None:
    # Killed (say, by the OOM killer), the private server would never come back by itself:
    # every request would be refused until someone restarted the whole gateway.
    config = _embedded_config(tmp_path)
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        client = runner.app[REDIS]
        await client.set("gw:test:kept", "accepted before the crash")
        pid = int((await client.info("server"))["process_id"])
        os.kill(pid, signal.SIGKILL)
        new_pid = None
        deadline = asyncio.get_running_loop().time() + 30  # generous: a loaded machine lags
        while new_pid is None and asyncio.get_running_loop().time() < deadline:
            try:
                new_pid = int((await client.info("server"))["process_id"])
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
        assert new_pid is not None, "the embedded redis-server was not restarted"
        assert new_pid != pid
        assert _alive(new_pid)
        assert await client.get("gw:test:kept") == b"accepted before the crash"  # from its AOF
    finally:
        await runner.cleanup()
    assert not _alive(pid)
    assert new_pid is not None
    assert not _alive(new_pid)


async def test_the_restarting_keeps_trying_when_the_server_cannot_be_spawned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The binary gone for a while (an upgrade half done): each try fails, and the one after
    # it comes back must still be made, or every request would be refused from then on.
    binary = tmp_path / "bin" / "redis-server"
    binary.parent.mkdir()
    shutil.copy2(find_redis_server(), binary)
    monkeypatch.setenv("REDIS_SERVER", str(binary))
    runner = web.AppRunner(create_app(_embedded_config(tmp_path)))
    await runner.setup()
    new_pid = None
    try:
        client = runner.app[REDIS]
        await client.set("gw:test:kept", "accepted before the crash")
        pid = int((await client.info("server"))["process_id"])
        moved = binary.rename(tmp_path / "bin" / "elsewhere")
        os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            if "did not start again" in caplog.text:  # the keeper has tried, and failed
                break
            await asyncio.sleep(0.05)
        assert "did not start again" in caplog.text
        moved.rename(binary)
        deadline = loop.time() + 30
        while new_pid is None and loop.time() < deadline:
            try:
                new_pid = int((await client.info("server"))["process_id"])
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
        assert new_pid not in (None, pid)
        assert await client.get("gw:test:kept") == b"accepted before the crash"
    finally:
        await runner.cleanup()
    assert new_pid is not None
    assert not _alive(new_pid)
