"""`gateway mail list|retry`: the notices still waiting or given up on, for operators.

    gateway mail list [--config config/gateway.yaml | --redis-url redis://…]
    gateway mail retry MESSAGE_ID

`list` shows every queued message with its attempts and last error, then those given up
on; exit 0 when nothing is undelivered, 1 when something is. `retry` puts a given-up
message back in the queue. With the embedded Redis, the gateway must be running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from gateway.access.mail import MailMessage, MailQueue
from gateway.cli.configfile import redis_url_settings
from gateway.clock import SystemClock
from gateway.config import load_config
from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import ConfigError
from gateway.redis_client import redis_client


def register(commands: argparse._SubParsersAction[Any]) -> None:
    mail = commands.add_parser("mail", help="queued and undelivered notices")
    mail.add_argument("--config", type=Path, default=Path("config/gateway.yaml"))
    mail.add_argument(
        "--redis-url",
        help="use this Redis instead of the config's (no password: the config's login is used)",
    )
    sub = mail.add_subparsers(dest="mail_command", required=True, metavar="ACTION")
    sub.add_parser("list", help="waiting and given-up messages").set_defaults(handler=_list)
    retry = sub.add_parser("retry", help="queue a given-up message again")
    retry.add_argument("id")
    retry.set_defaults(handler=_retry)


def _client(args: argparse.Namespace) -> aioredis.Redis:
    if args.redis_url:
        url = str(args.redis_url)
        return redis_client(redis_url_settings(url, args.config), url=url)
    config = load_config(args.config)
    if config.redis.external:
        return redis_client(config.redis)
    return redis_client(config.redis, url=EmbeddedRedis(config.data_dir / "redis").url)


def _row(message: MailMessage) -> str:
    due = datetime.fromtimestamp(message.next_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    error = f"  last error: {message.last_error}" if message.last_error else ""
    return (
        f"{message.id}  to {message.to}  attempts {message.attempts}  next {due}"
        f"  {message.subject!r}{error}"
    )


async def _with_queue(args: argparse.Namespace, work: Any) -> int:
    try:
        client = _client(args)
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        result: int = await work(MailQueue(client, SystemClock()))
        return result
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        print(f"gateway mail: Redis refused the login: {exc}", file=sys.stderr)
        return 2
    except (redis.exceptions.ConnectionError, OSError) as exc:
        print(f"gateway mail: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    finally:
        await client.aclose()


def _list(args: argparse.Namespace) -> int:
    async def work(queue: MailQueue) -> int:
        waiting, given_up = await queue.waiting(), await queue.undelivered()
        print(f"waiting: {len(waiting)}")
        for message in waiting:
            print("  " + _row(message))
        print(f"undelivered (given up): {len(given_up)}")
        for message in given_up:
            print("  " + _row(message))
        failing = [m for m in waiting if m.attempts > 0]
        return 1 if given_up or failing else 0

    return asyncio.run(_with_queue(args, work))


def _retry(args: argparse.Namespace) -> int:
    async def work(queue: MailQueue) -> int:
        if await queue.retry(args.id):
            print(f"{args.id}: queued again")
            return 0
        print(f"{args.id}: no such undelivered message", file=sys.stderr)
        return 1

    return asyncio.run(_with_queue(args, work))
