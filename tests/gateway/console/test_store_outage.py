"""The console pages and the JSON API while the grant store cannot be reached.

The access store here talks to a loopback port where no Redis listens (a real refused
connection): every answer is a 503 with `Retry-After`, never a 500, and its reason never
quotes the Redis error (address, port, socket path) to the caller.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from html import unescape

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.access.service import ACCESS
from gateway.accounts.totp import code_at
from tests.gateway.sessions.harness import PASSWORD, SAM_SECRET, Browser, Site

API = "/.gateway/api/v1"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


@pytest.fixture
async def outage(site: Site) -> AsyncIterator[int]:
    """The access store's reads go to a dead port; sessions still work. Yields the port."""
    store = site.app[ACCESS].store
    port = closed_port()
    dead = aioredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    working, store.redis = store.redis, dead
    try:
        yield port
    finally:
        store.redis = working
        await dead.aclose()


async def test_api_and_pages_answer_503_naming_no_address(
    site: Site, browser: Browser, outage: int
) -> None:
    answer = await browser.login("sam@vendor.example", PASSWORD, SAM_SECRET)
    assert answer.status == 303, answer.text
    async with browser.session.post(
        site.console(f"{API}/login"),
        json={
            "email": "sam@vendor.example",
            "password": PASSWORD,
            "totp": code_at(SAM_SECRET, site.clock.now() + 30),
        },
        headers={"Accept": "application/json"},
    ) as response:
        csrf = (await response.json())["csrf_token"]
    headers = {"Accept": "application/json", "X-CSRF-Token": csrf}
    answers: list[tuple[int, str, str | None]] = []
    for path in ("/requests", "/requests/abc"):
        async with browser.session.get(site.console(API + path), headers=headers) as response:
            body = await response.json()
            answers.append((response.status, body["reason"], response.headers.get("Retry-After")))
    for path in ("/requests", "/requests/abc"):
        page = await browser.get(site.console(path))
        found = re.search(r"<p>([^<]*)</p>", page.text)
        reason = unescape(found.group(1)) if found else page.text
        answers.append((page.status, reason, page.headers.get("Retry-After")))
    for status, reason, retry_after in answers:
        assert status == 503, reason
        assert retry_after is not None
        assert str(outage) not in reason, reason
        assert "127.0.0.1" not in reason, reason
