"""`/.gateway/api/v1/login|logout|me` over real HTTPS, and the account events in the audit."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import keys
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    CONSOLE_HOST,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Site,
    SiteFactory,
)

API = "/.gateway/api/v1"


async def call(
    browser: Browser, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
    async with browser.session.request(
        method, url, headers=headers, allow_redirects=False, **kwargs
    ) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def api_login(
    site: Site, browser: Browser, secret: str = ALICE_SECRET, email: str = "alice@acme.example"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await call(
        browser,
        "POST",
        site.console(f"{API}/login"),
        json={"email": email, "password": PASSWORD, "totp": site.code(secret)},
    )


async def test_login_me_logout(site: Site, browser: Browser) -> None:
    status, body, headers = await api_login(site, browser)
    assert status == 200, body
    assert body["principal"]["key"] == "member:acme:alice"
    assert body["principal"]["role"] == "admin"
    csrf = body["csrf_token"]
    assert "__Host-gw_console=" in headers["Set-Cookie"]
    status, me, _ = await call(browser, "GET", site.console(f"{API}/me"))
    assert status == 200
    assert me["principal"]["email"] == "alice@acme.example"
    assert me["csrf_token"] == csrf
    # Logout is state-changing: without the CSRF header it is refused and changes nothing.
    status, refused, _ = await call(browser, "POST", site.console(f"{API}/logout"))
    assert status == 403
    assert refused["error"] == "csrf_failed"
    assert (await call(browser, "GET", site.console(f"{API}/me")))[0] == 200
    status, out, _ = await call(
        browser, "POST", site.console(f"{API}/logout"), headers={"X-CSRF-Token": csrf}
    )
    assert status == 200
    assert out == {"status": "logged_out"}
    status, after, headers = await call(browser, "GET", site.console(f"{API}/me"))
    assert status == 401
    assert after["error"] == "login_required"
    assert headers["WWW-Authenticate"]
    actions = await site.account_events()
    assert ("login", "success") in actions
    assert ("logout", "success") in actions


async def test_login_refusals_are_clear(site: Site, browser: Browser) -> None:
    url = site.console(f"{API}/login")
    wrong = await call(
        browser,
        "POST",
        url,
        json={"email": "alice@acme.example", "password": "nope-nope", "totp": "123456"},
    )
    unknown = await call(
        browser,
        "POST",
        url,
        json={"email": "zed@acme.example", "password": "nope-nope", "totp": "123456"},
    )
    assert wrong[0] == unknown[0] == 401
    assert wrong[1]["error"] == unknown[1]["error"] == "invalid_credentials"
    assert wrong[1]["reason"] == unknown[1]["reason"]
    bad_code = "000000" if site.code(SAM_SECRET) != "000000" else "111111"
    status, body, _ = await call(
        browser,
        "POST",
        url,
        json={"email": "sam@vendor.example", "password": PASSWORD, "totp": bad_code},
    )
    assert status == 401
    assert body["error"] == "invalid_totp"
    assert ("login.password", "failure") in await site.account_events()
    assert ("login.totp", "failure") in await site.account_events()


async def test_bad_bodies(site: Site, browser: Browser) -> None:
    url = site.console(f"{API}/login")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": "email=a"}, 415, "unsupported_media_type"),
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "malformed_json",
        ),
        ({"json": ["a", "list"]}, 422, "invalid_body"),
        ({"json": {"email": "a@b.example", "password": 5, "totp": "1"}}, 422, "invalid_field"),
        (
            {"json": {"email": "a@b.example", "password": "p" * 2000, "totp": "1"}},
            422,
            "invalid_field",
        ),
        (
            {"json": {"email": "a@b.example", "password": "x" * 70_000, "totp": "1"}},
            413,
            "body_too_large",
        ),
        (
            {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
            400,
            "malformed_json",
        ),
    ]
    for kwargs, status, error in cases:
        got, body, _ = await call(browser, "POST", url, **kwargs)
        assert (got, body["error"]) == (status, error), kwargs
        assert set(body) == {"error", "reason", "request_id"}
    assert not await site.redis.keys(keys.password_failures_account("*"))


async def test_disabled_account_session_ends_at_next_call(site: Site, browser: Browser) -> None:
    assert (await api_login(site, browser))[0] == 200
    await site.accounts.store.set_disabled("member:acme:alice", True)
    status, body, _ = await call(browser, "GET", site.console(f"{API}/me"))
    assert status == 401
    assert body["error"] == "login_required"
    assert await site.redis.keys(keys.console_session("*")) == []


async def test_me_needs_fresh_mfa(site_factory: SiteFactory) -> None:
    site = await site_factory("mfa_max_age_s: 60")
    async with site.browser() as browser:
        assert (await api_login(site, browser))[0] == 200
        site.clock.advance(61)
        status, body, headers = await call(browser, "GET", site.console(f"{API}/me"))
        assert status == 401
        assert body["error"] == "mfa_required"
        assert "WWW-Authenticate" in headers


async def test_login_fails_closed_when_audit_refuses(site: Site, browser: Browser) -> None:
    # The audit stream key holds something else: every append is refused by Redis.
    await site.redis.delete(keys.audit_stream())
    await site.redis.set(keys.audit_stream(), "not a stream")
    status, body, _ = await api_login(site, browser)
    assert status == 503
    assert body["error"] == "audit_unavailable"
    assert browser.cookie("__Host-gw_console", CONSOLE_HOST) is None
    assert await site.redis.scard(keys.principal_sessions("member:acme:alice")) == 0
    status, _, _ = await call(browser, "GET", site.console(f"{API}/me"))
    assert status == 401


async def test_concurrent_api_logins_one_code_one_session(site: Site) -> None:
    browsers = [site.browser() for _ in range(5)]
    try:
        code = site.code(ALICE_SECRET)
        results = await asyncio.gather(
            *(
                call(
                    b,
                    "POST",
                    site.console(f"{API}/login"),
                    json={"email": "alice@acme.example", "password": PASSWORD, "totp": code},
                )
                for b in browsers
            )
        )
        statuses = sorted(r[0] for r in results)
        # One wins; the rest are refused: replayed code (401) or, since in-flight password
        # attempts count until they succeed, throttled (429).
        assert statuses[0] == 200
        assert set(statuses[1:]) <= {401, 429}
        assert await site.redis.scard(keys.principal_sessions("member:acme:alice")) == 1
    finally:
        for browser in browsers:
            await browser.close()


async def test_deeply_nested_login_body_is_a_clear_400(site: Site, browser: Browser) -> None:
    # Well under the size limit, but nested past what a JSON parser can recurse into.
    for body in ("[" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
        status, answer, _ = await call(
            browser,
            "POST",
            site.console(f"{API}/login"),
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400, answer
        assert answer["error"] == "malformed_json"
    assert (await api_login(site, browser))[0] == 200
