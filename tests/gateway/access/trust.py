"""Waiting for a grant watcher to trust its cache (its subscription heard its heartbeat)."""

from __future__ import annotations

import asyncio

from gateway.access.watcher import GrantWatcher

WAIT_S = 15.0  # generous: a loaded machine


async def trusted(watcher: GrantWatcher) -> None:
    """Return once `watcher` trusts its cache; TimeoutError after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not watcher.healthy:  # noqa: ASYNC110 (polling another task's state)
            await asyncio.sleep(0.01)


async def started_listening(watcher: GrantWatcher) -> asyncio.Task[None]:
    """`watcher.run()` started, once it trusts its cache."""
    task = asyncio.create_task(watcher.run())
    await trusted(watcher)
    return task
