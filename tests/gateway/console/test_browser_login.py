"""The console pages in a real Chromium: routed host -> login -> enrolment -> hand-off ->
the routed page (denied for lack of a grant) -> logout ends the routed session too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import async_playwright

from gateway.accounts.totp import code_at
from tests.gateway.sessions.harness import ACME, CONSOLE_HOST, PASSWORD, Site

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP gateway.localhost 127.0.0.1",
]


@pytest.fixture
async def chromium() -> AsyncIterator[Chromium]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.mark.browser
async def test_enrol_login_handoff_logout_in_chromium(site: Site, chromium: Chromium) -> None:
    bob = await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await site.accounts.store.set_password(bob.key, PASSWORD)
    token = await site.accounts.enrolment.issue(bob.key)
    context = await chromium.new_context(ignore_https_errors=True)
    page = await context.new_page()
    page.set_default_timeout(15_000)

    await page.goto(site.routed(ACME, "/welcome?tab=1"))
    assert page.url.startswith(site.console("/login?return="))
    await page.fill("#email", "bob@acme.example")
    await page.fill("#password", PASSWORD)
    await page.click("#submit")

    # No authenticator yet: the enrolment form, then the QR code.
    await page.wait_for_selector("#token")
    await page.fill("#password", PASSWORD)
    await page.fill("#token", token)
    await page.click("#submit")
    await page.wait_for_selector("#qr svg")
    uri = await page.inner_text("#otpauth")
    assert uri.startswith("otpauth://totp/")
    secret = (await page.inner_text("#secret")).strip()

    await page.fill("#code", code_at(secret, site.clock.now()))
    await page.click("#submit")
    await page.wait_for_url(site.routed(ACME, "/welcome?tab=1"))
    assert "no_grant" in await page.content()
    assert site.upstream.paths == []

    cookies = {c["name"]: c for c in await context.cookies()}
    app_cookie = cookies["__Host-gw_app"]
    assert app_cookie["domain"] == ACME
    assert app_cookie["secure"]
    assert app_cookie["httpOnly"]
    assert app_cookie["sameSite"] == "Lax"
    assert cookies["__Host-gw_console"]["domain"] == CONSOLE_HOST

    await page.goto(site.console("/"))
    assert "Logged in as" in await page.inner_text("#who")
    await page.click("#logout")
    await page.wait_for_selector("#logged-out")

    await page.goto(site.routed(ACME, "/welcome"))
    assert page.url.startswith(site.console("/login?return="))
    await context.close()


@pytest.mark.browser
async def test_wrong_password_page_in_chromium(site: Site, chromium: Chromium) -> None:
    context = await chromium.new_context(ignore_https_errors=True)
    page = await context.new_page()
    await page.goto(site.console("/login"))
    await page.fill("#email", "alice@acme.example")
    await page.fill("#password", "definitely-wrong")
    await page.click("#submit")
    assert (await page.inner_text("#error")).strip() == "email or password is wrong"
    await context.close()
