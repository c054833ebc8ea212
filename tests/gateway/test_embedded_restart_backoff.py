"""The embedded Redis keeper backs off from a server that dies before it answers.

A real redis-server behind a script that notes each launch and, while a flag file exists,
exits at once (as a server with a corrupt AOF does). The keeper must wait twice as long
after each such death, up to its ceiling, log once per try, and start from the shortest
wait again once the server has answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.app import _keep_running
from gateway.embedded_redis import EmbeddedRedis, find_redis_server

FIRST_S = 0.1
MAX_S = 1.6
CHECK_S = 0.02


class FlakyServer:
    def __init__(self, base: Path) -> None:
        self.launches = base / "launches"
        self.broken = base / "broken"
        self.binary = base / "redis-server"
        self.binary.write_text(
            "#!/bin/sh\n"
            f"date +%s.%N >> {self.launches}\n"
            f"if [ -e {self.broken} ]; then\n"
            '  echo "Bad file format reading the append only file" >&2; exit 1\n'
            "fi\n"
            f'exec {find_redis_server()} "$@"\n'
        )
        self.binary.chmod(0o700)

    def times(self) -> list[float]:
        return [float(line) for line in self.launches.read_text().split()]


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[tuple[FlakyServer, EmbeddedRedis, aioredis.Redis]]:
    server = FlakyServer(tmp_path)
    embedded = EmbeddedRedis(tmp_path / "redis", persistent=False, binary=str(server.binary))
    embedded.start()
    client = aioredis.Redis.from_url(embedded.url)
    keeper = asyncio.create_task(
        _keep_running(
            embedded, client, check_s=CHECK_S, first_backoff_s=FIRST_S, max_backoff_s=MAX_S
        )
    )
    try:
        yield server, embedded, client
    finally:
        keeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await keeper
        await client.aclose()
        await asyncio.to_thread(embedded.stop)


async def launches_reach(server: FlakyServer, count: int) -> list[float]:
    deadline = time.monotonic() + 60  # generous: a loaded machine lags
    while time.monotonic() < deadline:
        found = server.times()
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {len(server.times())} launches, {count} expected")


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def kill(embedded: EmbeddedRedis) -> None:
    assert embedded.pid is not None
    os.kill(embedded.pid, signal.SIGKILL)


async def test_a_server_that_dies_at_once_is_retried_with_a_doubling_capped_wait(
    flaky: tuple[FlakyServer, EmbeddedRedis, aioredis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    server, embedded, _ = flaky
    caplog.set_level(logging.ERROR, logger="gateway.embedded_redis")
    server.broken.touch()
    kill(embedded)
    times = await launches_reach(server, 8)  # the first start, then 7 restarts
    restarts = gaps(times[1:])  # waits between consecutive restarts
    # 0.1, 0.2, 0.4, 0.8, then the ceiling 1.6 (the delays only ever run late, never early)
    for wait, least in zip(restarts, [0.1, 0.2, 0.4, 0.8, 1.6, 1.6], strict=True):
        assert wait >= least - 0.01, restarts
    assert restarts[-1] < MAX_S * 2 + 1.0, restarts  # capped, not still doubling
    exits = [r for r in caplog.records if "exited with" in r.getMessage()]
    assert len(exits) <= len(times) - 1  # one line per try, not one per check
    assert "exited with -9" in exits[0].getMessage()  # the kill
    assert "Bad file format" in exits[1].getMessage()  # then each start that died at once


async def test_the_wait_starts_again_once_the_server_has_answered(
    flaky: tuple[FlakyServer, EmbeddedRedis, aioredis.Redis],
) -> None:
    server, embedded, client = flaky
    server.broken.touch()
    kill(embedded)
    await launches_reach(server, 6)  # waits of 0.1, 0.2, 0.4, 0.8 behind it: now 1.6
    server.broken.unlink()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if await client.ping():
                break
        except Exception:
            await asyncio.sleep(0.02)
    assert await client.ping()
    await asyncio.sleep(20 * CHECK_S)  # the keeper's next checks see it answer
    answered_at = len(server.times())
    server.broken.touch()
    kill(embedded)
    times = await launches_reach(server, answered_at + 2)
    # Reset: the first try comes at once, the next after the shortest wait, not the ceiling.
    assert times[answered_at + 1] - times[answered_at] < MAX_S, gaps(times)
