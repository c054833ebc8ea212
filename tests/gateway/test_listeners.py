"""Background listeners: kept up after failures, stopped for sure, and a loop that died is
said at the stop rather than lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from gateway.listeners import keep_listening, stop


async def test_a_failed_listener_is_started_again() -> None:
    calls = 0
    again = asyncio.Event()

    async def listen_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("subscription dropped")
        again.set()
        await asyncio.Event().wait()  # listening until cancelled

    task = asyncio.create_task(keep_listening(listen_once, "test events", "reconnecting"))
    try:
        await asyncio.wait_for(again.wait(), 10)
        assert calls == 2
    finally:
        await stop([task])
    assert task.cancelled()


async def test_stop_ends_a_task_that_swallows_the_first_cancel() -> None:
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # as a Redis call may do
            await asyncio.Event().wait()
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(stop([task]), 10)
    assert task.done()


async def test_a_task_that_died_with_an_error_is_logged_at_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("a defect in the loop")

    task = asyncio.create_task(broken(), name="broken-loop")
    await asyncio.wait({task})
    with caplog.at_level(logging.ERROR, logger="gateway.listeners"):
        await stop([task])
    assert [r.getMessage() for r in caplog.records] == [
        "background task broken-loop had ended with an error"
    ]
    assert caplog.records[0].exc_info is not None
