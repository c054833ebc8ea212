"""Redis goes away under a running gateway, then comes back on the same socket.

The gateway's Redis here is a private redis-server on a known unix socket with its
append-only file (`appendfsync always`), as the embedded default runs it. It is killed
outright (SIGKILL: no chance to save anything more). While it is down, proxied requests
are 503 and nothing reaches Acme CRM (fail closed), logins are refused with a clear
error, and readiness says so. Started again on the same socket with its data, the gateway
recovers by itself: the same grant works again.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.embedded_redis import EmbeddedRedis
from tests.e2e.conftest import ALICE, SAM, Person, Stack, StackFactory


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always", persistent=True)
    server.start()
    yield server
    server.stop()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Poll `check` (a request through the gateway: no event to wait on) until it is true."""
    for _ in range(int(timeout_s / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not true within {timeout_s} s")


async def test_redis_down_fails_closed_and_the_gateway_recovers(
    stack_factory: StackFactory,
    people: Callable[[Stack], Person],
    private_redis: EmbeddedRedis,
) -> None:
    stack = await stack_factory(private_redis.url)
    sam, alice = people(stack), people(stack)
    assert (await sam.log_in(SAM)).status == 200
    filed = await sam.api(
        "POST",
        "/requests",
        {"org": "acme", "member": "bob", "justification": "ticket 7: outage drill",
         "duration_s": 3600, "scope": "write"},
    )  # fmt: skip
    assert filed.status == 201, filed.text
    rid = filed.json()["id"]
    assert (await alice.log_in(ALICE)).status == 200
    assert (await alice.api("POST", f"/requests/{rid}/approve", {})).status == 200
    works = await sam.hand_off("/whoami")
    assert works.status == 200, works.text
    assert works.json()["grant"] == rid

    # Redis is killed outright.
    pid = private_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    private_redis.stop()  # reaps the process; the socket file stays behind
    reached = len(stack.seen)

    for method, path, body in (
        ("GET", "/whoami", None),
        ("GET", "/api/contacts", None),
        ("POST", "/api/contacts", {"name": "Eve", "email": "eve@acme.example"}),
    ):
        down = await sam.call(method, stack.routed(path), json=body)
        assert down.status == 503, (method, path, down.status, down.text)
        assert down.json()["error"], down.text
        assert down.json()["request_id"]
    assert len(stack.seen) == reached  # SECURITY: nothing reached the upstream

    ready = await sam.call("GET", stack.routed("/.gateway/readyz"))
    assert ready.status == 503
    refused = await people(stack).log_in(ALICE)
    assert refused.status == 503, refused.text
    assert refused.json()["error"], refused.text
    assert refused.json()["reason"]
    assert "__Host-gw_console" not in refused.headers.get("Set-Cookie", "")

    # Redis comes back on the same socket with its append-only file.
    private_redis.start()

    async def whoami_works() -> bool:
        answer = await sam.call("GET", stack.routed("/whoami"))
        return answer.status == 200

    await until(whoami_works)
    again = await sam.call("GET", stack.routed("/whoami"))
    assert (again.json()["user"], again.json()["grant"]) == ("bob", rid)
    assert again.json()["assertion"]["verified"] is True
    assert stack.seen[-1].path == "/whoami"
    assert (await sam.call("GET", stack.routed("/.gateway/readyz"))).status == 200
    shown = await alice.api("GET", f"/requests/{rid}")
    assert shown.status == 200, shown.text
    assert shown.json()["state"] == "approved"
