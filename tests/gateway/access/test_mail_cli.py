"""`gateway mail list|retry` as a real subprocess against the real Redis."""

from __future__ import annotations

import asyncio
import os
import sys

import redis.asyncio as aioredis

from gateway.access.mail import MAX_ATTEMPTS, MailQueue
from gateway.clock import ManualClock

MAIN = "import sys; from gateway.cli import main; sys.exit(main())"


async def mail_cli(redis_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MAIN, "mail", "--redis-url", redis_url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_list_shows_failing_and_given_up_notices(
    redis: aioredis.Redis, redis_url: str, clock: ManualClock
) -> None:
    queue = MailQueue(redis, clock)
    fine = await queue.enqueue("alice@acme.example", "Access request", "body")
    code, out, _ = await mail_cli(redis_url, "list")
    assert code == 0
    assert fine in out
    assert "undelivered (given up): 0" in out

    failing = await queue.enqueue("sam@vendor.example", "Approved", "body")
    message = await queue.get(failing)
    assert message is not None
    for _ in range(MAX_ATTEMPTS):
        await queue.failed(message, "ConnectionRefusedError: smtp down")
        message = await queue.get(failing)
        assert message is not None
    code, out, _ = await mail_cli(redis_url, "list")
    assert code == 1
    assert "undelivered (given up): 1" in out
    assert "smtp down" in out

    code, out, _ = await mail_cli(redis_url, "retry", failing)
    assert code == 0
    assert [m.id for m in await queue.undelivered()] == []
    code, _, err = await mail_cli(redis_url, "retry", "nope")
    assert code == 1
    assert "no such" in err
