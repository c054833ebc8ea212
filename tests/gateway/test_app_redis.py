"""The embedded redis-server started by the app outlives the loop's worker threads.

The kernel's parent-death signal (PR_SET_PDEATHSIG) follows the THREAD that spawned the
child: a server spawned from a default-executor thread dies when that thread retires.
"""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from redis.exceptions import RedisError

from gateway.app import REDIS, create_app
from gateway.config import parse_config

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


async def test_embedded_redis_survives_retired_executor_threads(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    config = parse_config(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{policy}]
""",
        "test.yaml",
    )
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
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    config = parse_config(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{policy}]
""",
        "test.yaml",
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        client = runner.app[REDIS]
        await client.set("gw:test:kept", "accepted before the crash")
        pid = int((await client.info("server"))["process_id"])
        os.kill(pid, signal.SIGKILL)
        new_pid = None
        for _ in range(200):
            try:
                new_pid = int((await client.info("server"))["process_id"])
                break
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
