"""The approval in a real Chromium, and the wall between the console and routed hosts.

Sam files a request through the API, then opens Acme CRM in Chromium: console login,
hand-off, a clear no_grant page. Alice follows the link in her email, logs in and presses
Approve; sam's next page of Acme CRM is the app itself, acting as bob. Along the way no
answer on the routed host sets a cookie other than the host-only app session, or carries
a CSRF token; the console's cookies stay on the console's host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser as Chromium
from playwright.async_api import Page, async_playwright

from gateway.accounts.totp import code_at
from gateway.cli.demo import APP_HOST
from gateway.clock import SystemClock
from gateway.cookies import APP_SESSION, HANDOFF_BINDING
from tests.e2e.conftest import ALICE, CONSOLE_HOST, SAM, Person, Stack, StackFactory
from tests.gateway.console.test_browser_login import ARGS, CHROMIUM

ROUTED_PATHS_TO_PROBE = ("/login", "/requests", "/.gateway/api/v1/me", "/.gateway/jwks.json")


@pytest.fixture
async def chromium() -> AsyncIterator[Chromium]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def log_in(page: Page, person: tuple[str, str, str], *, offset_s: float = 0) -> None:
    email, password, secret = person
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("#submit")
    await page.wait_for_selector("#code")
    await page.fill("#code", code_at(secret, SystemClock().now() + offset_s))
    await page.click("#submit")


@pytest.mark.browser
async def test_approver_approves_in_chromium_and_staff_page_works(
    stack_factory: StackFactory,
    people: Callable[[Stack], Person],
    chromium: Chromium,
    redis_url: str,
    redis: aioredis.Redis,  # flushed: this walk starts from an empty store
) -> None:
    stack = await stack_factory(redis_url)
    api = people(stack)
    assert (await api.log_in(SAM)).status == 200
    filed = await api.api(
        "POST",
        "/requests",
        {"org": "acme", "member": "bob", "justification": "ticket 9: export button",
         "duration_s": 1800, "scope": "write"},
    )  # fmt: skip
    assert filed.status == 201, filed.text
    rid = filed.json()["id"]

    # Sam opens Acme CRM: console login (the API login used this TOTP step, so the next
    # one, within the allowed skew), hand-off, and no grant yet.
    sam_context = await chromium.new_context(ignore_https_errors=True)
    sam = await sam_context.new_page()
    sam.set_default_timeout(15_000)
    await sam.goto(stack.routed("/"))
    assert sam.url.startswith(stack.console("/login?return="))
    await log_in(sam, SAM, offset_s=30)
    await sam.wait_for_url(stack.routed("/"))
    assert "no_grant" in await sam.content()
    assert "csrf" not in (await sam.content()).lower()
    assert stack.seen == []

    # Alice follows her email's link, logs in, reads the request and approves it.
    await stack.mail_to("alice@acme.example", 1)
    notice = next(m for m in stack.mail if "alice@acme.example" in m.recipients)
    link = stack.console(f"/requests/{rid}")
    assert link in notice.text
    alice_context = await chromium.new_context(ignore_https_errors=True)
    alice = await alice_context.new_page()
    alice.set_default_timeout(15_000)
    await alice.goto(link)
    await log_in(alice, ALICE)
    await alice.wait_for_url(link)
    assert "ticket 9: export button" in await alice.inner_text("#justification")
    assert (await alice.inner_text("#state")).strip() == "pending"
    await alice.click("#approve button")
    await alice.wait_for_selector("#revoke")
    assert (await alice.inner_text("#state")).startswith("approved")

    # Sam's next page is Acme CRM itself, acting as bob.
    await sam.goto(stack.routed("/"))
    assert "Signed in as bob" in await sam.inner_text("header")
    assert "sam" in await sam.inner_text("header")
    # (The browser may also fetch /favicon.ico by itself, after the page.)
    page = next(seen for seen in reversed(stack.seen) if seen.path == "/")
    assert page.headers["X-Gateway-User"] == "bob"
    assert "csrf" not in (await sam.content()).lower()

    # Console paths asked of the routed host are never the console's pages or tokens.
    for path in ROUTED_PATHS_TO_PROBE:
        answer = await sam.goto(stack.routed(path))
        assert answer is not None
        assert answer.status in (403, 404), (path, answer.status)
        assert "csrf" not in (await answer.text()).lower(), path
        assert await answer.header_value("set-cookie") is None, path

    # Host-only cookies: the app session on the routed host, the console's on its own.
    sam_cookies = {(c["name"], c["domain"]) for c in await sam_context.cookies()}
    assert ("__Host-gw_app", APP_HOST) in sam_cookies
    on_app_host = {name for name, domain in sam_cookies if domain == APP_HOST}
    assert on_app_host == {APP_SESSION, HANDOFF_BINDING}  # the nonce stays for other tabs
    assert {domain for _, domain in sam_cookies} == {APP_HOST, CONSOLE_HOST}
    alice_cookies = await alice_context.cookies()
    assert {c["domain"] for c in alice_cookies} == {CONSOLE_HOST}
    await sam_context.close()
    await alice_context.close()
