"""Console login over real HTTPS: every refusal is clear and changes nothing."""

from __future__ import annotations

import re

import pytest
from yarl import URL

from gateway import keys
from gateway.sessions.records import sid_of
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    CONSOLE_HOST,
    PASSWORD,
    Browser,
    Site,
    SiteFactory,
)

CONSOLE_COOKIE = "__Host-gw_console"
PRELOGIN_COOKIE = "__Host-gw_prelogin"


async def password_step(browser: Browser, site: Site, email: str, password: str) -> tuple[int, str]:
    page = await browser.form(site.console("/login"), {"email": email, "password": password})
    return page.status, page.text


def message(text: str) -> str:
    found = re.search(r'id="error">([^<]*)<', text)
    return found.group(1) if found else ""


async def test_unknown_user_and_wrong_password_look_alike(site: Site, browser: Browser) -> None:
    wrong = await password_step(browser, site, "alice@acme.example", "not-the-password")
    unknown = await password_step(browser, site, "nobody@acme.example", "not-the-password")
    assert wrong[0] == unknown[0] == 401
    assert message(wrong[1]) == message(unknown[1]) == "email or password is wrong"


async def test_password_throttle_by_clock(site: Site, browser: Browser) -> None:
    for _ in range(3):
        status, _ = await password_step(browser, site, "alice@acme.example", "wrong-wrong")
        assert status == 401
    page = await browser.form(
        site.console("/login"), {"email": "alice@acme.example", "password": PASSWORD}
    )
    assert page.status == 429
    assert page.headers["Retry-After"] == "1"
    site.clock.advance(1)
    status, _ = await password_step(browser, site, "alice@acme.example", PASSWORD)
    assert status == 303


async def test_totp_lockout_by_clock(site: Site, browser: Browser) -> None:
    status, _ = await password_step(browser, site, "alice@acme.example", PASSWORD)
    assert status == 303
    wrong = "000000" if site.code(ALICE_SECRET) != "000000" else "111111"
    statuses = []
    for _ in range(5):
        page = await browser.form(site.console("/login/totp"), {"code": wrong})
        statuses.append(page.status)
    assert statuses == [401, 401, 401, 401, 403]
    # Locked: only a correct password learns it, and not even the right code works.
    status, text = await password_step(browser, site, "alice@acme.example", PASSWORD)
    assert status == 403
    assert "locked" in message(text)
    status, text = await password_step(browser, site, "alice@acme.example", "wrong-password")
    assert status == 401
    site.clock.advance(15 * 60)
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert done.status == 303


async def test_disabled_account(site: Site, browser: Browser) -> None:
    await site.accounts.store.set_disabled("member:acme:alice", True)
    status, _ = await password_step(browser, site, "alice@acme.example", "wrong-password")
    assert status == 401
    status, text = await password_step(browser, site, "alice@acme.example", PASSWORD)
    assert status == 403
    assert message(text) == "this account is disabled"


async def test_cookie_attributes_and_rotation_at_login(site: Site, browser: Browser) -> None:
    async with browser.session.get(site.console("/login"), allow_redirects=False) as first:
        raw = first.headers.getall("Set-Cookie")
    # Before a login only the signed pre-login cookie exists (Redis: test_prelogin).
    assert len(raw) == 1
    cookie = raw[0]
    assert cookie.startswith(PRELOGIN_COOKIE + "=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie
    assert f"Max-Age={site.config.sessions.idle_timeout_s}" in cookie
    assert browser.cookie(CONSOLE_COOKIE, CONSOLE_HOST) is None
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert done.status == 303
    after = browser.cookie(CONSOLE_COOKIE, CONSOLE_HOST)
    assert after is not None
    # The pre-login state is done with; the new session is indexed for the principal.
    assert browser.cookie(PRELOGIN_COOKIE, CONSOLE_HOST) is None
    assert await site.redis.sismember(keys.principal_sessions("member:acme:alice"), sid_of(after))
    idle = site.config.sessions.idle_timeout_s
    assert await site.redis.ttl(keys.console_session(sid_of(after))) > idle + 60
    # The index is garbage-collected too, never before the sessions it lists.
    lifetime = site.config.sessions.absolute_lifetime_s
    index_ttl = await site.redis.ttl(keys.principal_sessions("member:acme:alice"))
    assert lifetime < index_ttl <= lifetime + 60


async def test_a_planted_console_cookie_never_becomes_the_session(
    site: Site, browser: Browser
) -> None:
    planted = "P" * 43  # well-formed, chosen by someone else before the login
    browser.session.cookie_jar.update_cookies({CONSOLE_COOKIE: planted}, URL(site.console("/")))
    assert (await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)).status == 303
    after = browser.cookie(CONSOLE_COOKIE, CONSOLE_HOST)
    assert after is not None
    assert after != planted
    assert not await site.redis.exists(keys.console_session(sid_of(planted)))
    assert await site.redis.exists(keys.console_session(sid_of(after)))


async def test_missing_or_wrong_csrf_refused(site: Site, browser: Browser) -> None:
    await browser.get(site.console("/login"))
    for token in (None, "forged", "x" * 43):
        data = {"email": "alice@acme.example", "password": PASSWORD}
        if token is not None:
            data["csrf_token"] = token
        page = await browser.post(site.console("/login"), data=data)
        assert page.status == 403
        assert "csrf_failed" in page.text
    assert not await site.redis.exists(keys.password_failures_account("alice@acme.example"))


@pytest.mark.parametrize(
    "cookie",
    ["forged", "A" * 43, "../../etc", "x" * 5000],
)
async def test_forged_console_cookie_is_no_session(site: Site, cookie: str) -> None:
    async with site.browser() as browser:
        page = await browser.get(
            site.console("/"), headers={"Cookie": f"{CONSOLE_COOKIE}={cookie}"}
        )
        assert page.status == 303
        assert page.location == "/login"


async def test_tampered_valid_looking_cookie_refused(site: Site, browser: Browser) -> None:
    await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    real = browser.cookie(CONSOLE_COOKIE, CONSOLE_HOST)
    assert real is not None
    tampered = real[:-1] + ("A" if real[-1] != "A" else "B")
    async with site.browser() as other:
        page = await other.get(
            site.console("/"), headers={"Cookie": f"{CONSOLE_COOKIE}={tampered}"}
        )
        assert page.status == 303
        assert page.location == "/login"
        ok = await other.get(site.console("/"), headers={"Cookie": f"{CONSOLE_COOKIE}={real}"})
        assert ok.status == 200
        assert "Alice" in ok.text


async def test_oversized_form_refused(site: Site, browser: Browser) -> None:
    page = await browser.get(site.console("/login"))
    huge = await browser.post(
        site.console("/login"),
        data={"csrf_token": page.csrf, "email": "a@b.example", "password": "x" * 70_000},
    )
    assert huge.status == 413
    long_field = await browser.post(
        site.console("/login"),
        data={"csrf_token": page.csrf, "email": "a" * 300, "password": PASSWORD},
    )
    assert long_field.status == 422
    assert "invalid_field" in long_field.text
    wrong_type = await browser.post(
        site.console("/login"), json={"csrf_token": page.csrf, "email": "a@b.example"}
    )
    assert wrong_type.status == 415


async def test_idle_timeout_and_absolute_lifetime(site_factory: SiteFactory) -> None:
    site = await site_factory(
        "idle_timeout_s: 600, absolute_lifetime_s: 1800, mfa_max_age_s: 86400"
    )
    async with site.browser() as browser:
        await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
        assert (await browser.get(site.console("/"))).status == 200
        site.clock.advance(599)
        assert (await browser.get(site.console("/"))).status == 200
        site.clock.advance(599)
        assert (await browser.get(site.console("/"))).status == 200
        site.clock.advance(601)  # idle too long
        assert (await browser.get(site.console("/"))).location == "/login"

        site.clock.advance(60)
        await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
        for _ in range(3):
            site.clock.advance(590)
            assert (await browser.get(site.console("/"))).status == 200
        site.clock.advance(100)  # never idle, but past the absolute lifetime
        assert (await browser.get(site.console("/"))).location == "/login"


async def test_password_reset_voids_a_pending_totp_step(site: Site, browser: Browser) -> None:
    status, _ = await password_step(browser, site, "alice@acme.example", PASSWORD)
    assert status == 303
    # The password proven a moment ago is reset before the code arrives.
    await site.accounts.store.set_password("member:acme:alice", "a-brand-new-password-42")
    page = await browser.form(site.console("/login/totp"), {"code": site.code(ALICE_SECRET)})
    assert page.status == 401
    assert message(page.text) == "Your password has changed: enter it again."
    assert (await browser.get(site.console("/"))).location == "/login"
    assert not await site.redis.smembers(keys.principal_sessions("member:acme:alice"))
    # The new password then logs in as usual.
    site.clock.advance(30)
    done = await browser.login("alice@acme.example", "a-brand-new-password-42", ALICE_SECRET)
    assert done.status == 303
