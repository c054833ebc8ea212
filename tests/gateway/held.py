"""A test stage that holds every flow at one point of the pipeline until released.

For races between a check and the forward: put it right after the stage whose verdict
should go stale, change the state while the flow waits, then release it.

    held = held_after(app[STAGES], "grant")
    request = asyncio.ensure_future(client.get(...))
    await asyncio.wait_for(held.entered.wait(), WAIT_S)
    ...  # revoke, log out
    held.release.set()
"""

from __future__ import annotations

import asyncio

from gateway.flow import Flow
from gateway.pipeline import Stage


class HeldStage:
    """Holds each flow until `release` is set; `entered` says a flow has arrived."""

    name = "held"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, flow: Flow) -> None:
        self.entered.set()
        await self.release.wait()


def held_after(stages: list[Stage], name: str) -> HeldStage:
    """A HeldStage put right after the stage called `name` in `stages`."""
    held = HeldStage()
    stages.insert([stage.name for stage in stages].index(name) + 1, held)
    return held
