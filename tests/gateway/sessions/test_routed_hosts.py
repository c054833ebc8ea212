"""The hand-off and app sessions on routed hosts, over real HTTPS."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.sessions.handoff import ReturnAddresses, browser_binding, new_nonce
from gateway.sessions.prelogin import MAX_DESTINATION
from gateway.sessions.routed import addressed_port
from tests.gateway.sessions.harness import (
    ACME,
    ALICE_SECRET,
    BETA,
    CONSOLE_HOST,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Site,
    SiteFactory,
)

APP = "__Host-gw_app"
CONSOLE = "__Host-gw_console"


async def logged_in(site: Site, browser: Browser, host: str = ACME, path: str = "/p") -> str:
    """Walk the hand-off for `host`; returns the app-session cookie value."""
    first = await browser.get(site.routed(host, path))
    assert first.status == 303
    await browser.get(first.location)
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert done.status == 303, done.text
    back = await browser.get(done.location)
    assert back.status == 303, back.text
    cookie = browser.cookie(APP, host)
    assert cookie is not None
    return cookie


async def handoff_code(site: Site, browser: Browser, host: str = ACME) -> str:
    """Log in through `host`'s redirect but stop before redeeming the code."""
    first = await browser.get(site.routed(host, "/q"))
    await browser.get(first.location)
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert done.location.startswith(site.routed(host, "/.gateway/auth?code="))
    return done.query("code")


async def test_handoff_code_is_single_use(site: Site, browser: Browser) -> None:
    code = await handoff_code(site, browser)
    first = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
    assert first.status == 303
    again = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
    assert again.status == 403
    assert "invalid_handoff" in again.text


async def test_handoff_code_expires_by_clock(site: Site, browser: Browser) -> None:
    code = await handoff_code(site, browser)
    site.clock.advance(site.config.sessions.handoff_code_ttl_s)
    late = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
    assert late.status == 403
    assert browser.cookie(APP, ACME) is None


async def test_handoff_code_bound_to_its_host(site: Site, browser: Browser) -> None:
    code = await handoff_code(site, browser)
    elsewhere = await browser.get(site.routed(BETA, f"/.gateway/auth?code={code}"))
    assert elsewhere.status == 403
    assert browser.cookie(APP, BETA) is None
    # Presented on the wrong host, the code is spent: it may have leaked.
    home = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
    assert home.status == 403


async def test_forged_and_malformed_codes(site: Site, browser: Browser) -> None:
    for code in ("", "forged", "A" * 43, "x" * 5000, "%00"):
        page = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
        assert page.status == 403
    post = await browser.post(site.routed(ACME, "/.gateway/auth?code=x"))
    assert post.status == 405
    assert post.headers["Allow"] == "GET, HEAD"


async def test_app_cookie_is_for_its_host_only(site: Site, browser: Browser) -> None:
    cookie = await logged_in(site, browser)
    async with site.browser() as other:
        page = await other.get(site.routed(BETA, "/p"), headers={"Cookie": f"{APP}={cookie}"})
        assert page.status == 303
        assert page.location.startswith(site.console("/login?return="))
        same = await other.get(site.routed(ACME, "/p"), headers={"Cookie": f"{APP}={cookie}"})
        assert same.status == 403  # logged in; denied only for lack of a grant
        assert "no_grant" in same.text


async def test_console_cookie_means_nothing_on_a_routed_host(site: Site, browser: Browser) -> None:
    await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    console_cookie = browser.cookie(CONSOLE, CONSOLE_HOST)
    assert console_cookie is not None
    async with site.browser() as other:
        page = await other.get(
            site.routed(ACME, "/p"), headers={"Cookie": f"{CONSOLE}={console_cookie}"}
        )
        assert page.status == 303
        assert page.location.startswith(site.console("/login?return="))
        as_app = await other.get(
            site.routed(ACME, "/p"), headers={"Cookie": f"{APP}={console_cookie}"}
        )
        assert as_app.status == 303
    assert site.upstream.paths == []


async def test_logout_ends_every_app_session(site: Site, browser: Browser) -> None:
    await logged_in(site, browser, ACME)
    # A second routed host of the same login.
    first = await browser.get(site.routed(BETA, "/b"))
    login = await browser.get(first.location)
    assert login.status == 303  # already logged in: straight to the hand-off
    assert (await browser.get(login.location)).status == 303
    assert browser.cookie(APP, BETA) is not None
    for host in (ACME, BETA):
        assert (await browser.get(site.routed(host, "/p"))).status == 403  # no_grant
    out = await browser.form(site.console("/logout"), {})
    assert out.status == 200
    assert "You are logged out" in out.text
    for host in (ACME, BETA):
        page = await browser.get(site.routed(host, "/p"))
        assert page.status == 303
        assert page.location.startswith(site.console("/login?return="))
    assert await site.redis.keys(keys.app_session("*")) == []


async def test_routed_logout_goes_to_console(site: Site, browser: Browser) -> None:
    await logged_in(site, browser)
    page = await browser.get(site.routed(ACME, "/.gateway/logout"))
    assert page.status == 303
    assert page.location == site.console("/logout")
    assert browser.cookie(APP, ACME) is None
    assert (await browser.get(site.routed(ACME, "/p"))).status == 303


async def test_disable_ends_sessions_at_once(site: Site, browser: Browser) -> None:
    await logged_in(site, browser)
    await site.accounts.store.set_disabled("member:acme:alice", True)
    page = await browser.get(site.routed(ACME, "/p"))
    assert page.status == 303
    console = await browser.get(site.console("/"))
    assert console.location == "/login"


async def test_step_up_when_mfa_is_stale(site_factory: SiteFactory) -> None:
    site = await site_factory("mfa_max_age_s: 300")
    async with site.browser() as browser:
        await _step_up(site, browser)


async def _step_up(site: Site, browser: Browser) -> None:
    await logged_in(site, browser, path="/deep/page?x=1")
    site.clock.advance(site.config.sessions.mfa_max_age_s + 1)
    api = await browser.get(
        site.routed(ACME, "/deep/page?x=1"), headers={"Accept": "application/json"}
    )
    assert api.status == 401
    assert '"error": "mfa_required"' in api.text
    stale = await browser.get(site.routed(ACME, "/deep/page?x=1"))
    assert stale.status == 303
    assert stale.location.startswith(site.console("/step-up?return="))
    form = await browser.get(stale.location)
    assert form.status == 200
    assert "Confirm it is you" in form.text
    done = await browser.form(site.console("/step-up"), {"code": site.code(ALICE_SECRET)}, form)
    assert done.status == 303
    back = await browser.get(done.location)
    assert back.location == "/deep/page?x=1"
    assert (await browser.get(site.routed(ACME, "/deep/page?x=1"))).status == 403  # no_grant
    # The console's own pages step up too.
    site.clock.advance(site.config.sessions.mfa_max_age_s + 1)
    home = await browser.get(site.console("/"))
    assert home.location == "/step-up?next=/"


async def test_return_address_must_be_signed_and_routed(site: Site, browser: Browser) -> None:
    binding = str(browser_binding(new_nonce()))
    evil = ReturnAddresses(b"k" * 32, site.clock).sign("https://evil.example/", binding=binding)
    for value in (evil, "https://evil.example/", "", "a.b", "x" * 5000):
        page = await browser.get(site.console(f"/login?return={quote(value)}"))
        assert page.status == 400
        assert "invalid_return" in page.text
    # Signed by the gateway but naming a host that is not routed (or the console itself).
    from gateway.sessions.logins import logins_of

    logins = logins_of(site.app)
    for url in ("https://evil.example/x", site.console("/"), "http://acme.localhost/x"):
        page = await browser.get(
            site.console(f"/login?return={quote(logins.addresses.sign(url, binding=binding))}")
        )
        assert page.status == 400
    # Signed addresses expire.
    old = logins.addresses.sign(site.routed(ACME, "/x"), binding=binding)
    site.clock.advance(3601)
    page = await browser.get(site.console(f"/login?return={quote(old)}"))
    assert page.status == 400
    for nxt in (
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/.gateway/api/v1/me",
    ):
        page = await browser.get(site.console(f"/login?next={quote(nxt)}"))
        assert page.status == 400


async def test_totp_replay_across_two_instances(site_factory: SiteFactory) -> None:
    one = await site_factory()
    two = await site_factory()
    first, second = one.browser(), two.browser()
    try:
        for browser, site in ((first, one), (second, two)):
            await browser.form(
                site.console("/login"), {"email": "sam@vendor.example", "password": PASSWORD}
            )
        code = one.code(SAM_SECRET)
        ok = await first.form(one.console("/login/totp"), {"code": code})
        assert ok.status == 303
        replay = await second.form(two.console("/login/totp"), {"code": code})
        assert replay.status == 401
        assert "already used" in replay.text
    finally:
        await first.close()
        await second.close()


async def test_concurrent_logins_with_one_code(site: Site) -> None:
    browsers = [site.browser() for _ in range(6)]
    try:
        for browser in browsers:
            page = await browser.form(
                site.console("/login"), {"email": "alice@acme.example", "password": PASSWORD}
            )
            assert page.status == 303
        code = site.code(ALICE_SECRET)
        pages = await asyncio.gather(
            *(b.form(site.console("/login/totp"), {"code": code}) for b in browsers)
        )
        statuses = sorted(p.status for p in pages)
        # One code, one login. The others: wrong code (401), or - since in-flight attempts
        # count toward the lockout of 5 - refused as locked (403) when they all overlap.
        assert statuses[0] == 303
        assert set(statuses[1:]) <= {401, 403}
        assert len(statuses) == 6
        assert await site.redis.scard(keys.principal_sessions("member:acme:alice")) == 1
    finally:
        for browser in browsers:
            await browser.close()


@pytest.mark.parametrize(
    ("host", "port"),
    [("acme.localhost", 80), ("acme.localhost:80", 80), ("acme.localhost:8080", 8080), ("", 0)],
)
async def test_the_port_a_plain_http_request_addressed(host: str, port: int) -> None:
    # No port in Host means the scheme's default: 80 here, 443 over TLS (test_handoff_binding).
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=str(addressed_port(request)))

    app.router.add_get("/", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    assert raw.split(b"\r\n\r\n", 1)[1] == str(port).encode()


@pytest.mark.parametrize(
    ("path", "landing"),
    [
        ("/deep/page?q=" + "x" * 1800, "/deep/page"),  # the query would not fit: the path
        ("/" + "p" * 1800 + "?q=1", "/"),  # not even the path: the host's root
        ("/deep/page?q=" + "x" * 200, "/deep/page?q=" + "x" * 200),  # fits: all of it
    ],
)
async def test_a_deep_link_too_long_to_remember_still_logs_in(
    site: Site, browser: Browser, path: str, landing: str
) -> None:
    # The console keeps the return address in the pre-login cookie and refuses one too long
    # for it: the routed host never sends one, or nobody could log in from a long link.
    first = await browser.get(site.routed(ACME, path))
    assert first.status == 303
    assert len(first.query("return")) <= MAX_DESTINATION
    login_page = await browser.get(first.location)
    assert login_page.status == 200, login_page.text
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert done.location.startswith(site.routed(ACME, "/.gateway/auth?code="))
    back = await browser.get(done.location)
    assert back.status == 303, back.text
    assert back.location == landing
    assert browser.cookie(APP, ACME) is not None
