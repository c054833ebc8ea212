"""The app's pub/sub listeners as background tasks: kept up after any failure, stopped for sure.

A listener (the grant watcher, the session ends) is a `listen_once` coroutine function that
subscribes and handles messages until the subscription fails, then raises. `keep_listening`
runs it for ever, reconnecting RECONNECT_S after each failure; `stop` ends such tasks.

    task = asyncio.create_task(keep_listening(watcher.listen_once, "grant events", "..."))
    ...
    await stop([task])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

RECONNECT_S = 1.0
STOP_ROUND_S = 0.2


async def keep_listening(
    listen_once: Callable[[], Awaitable[None]], channel: str, meanwhile: str
) -> None:
    """Run `listen_once` for ever, again RECONNECT_S after each failure (logged, naming the
    `channel` and what holds `meanwhile`)."""
    while True:
        try:
            await listen_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s subscription lost (%s); %s", channel, exc, meanwhile)
        await asyncio.sleep(RECONNECT_S)


async def stop(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until every one has ended."""
    tasks = list(tasks)
    # A cancel that lands inside a Redis call can be swallowed there; cancel again until
    # every task has ended.
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_ROUND_S)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                # Such loops catch their own failures: one that ended so is a defect, said
                # here rather than raised into the app's shutdown.
                log.exception("background task %s had ended with an error", task.get_name())
