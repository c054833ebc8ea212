"""Before a password is proven nothing reaches Redis: the login's state rides in a signed,
short-lived `__Host-gw_prelogin` cookie, and login CSRF is refused as strongly as before."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from gateway import keys
from gateway.clock import ManualClock
from gateway.cookies import PRELOGIN
from gateway.demo.acme import LoopbackResolver
from gateway.sessions.handoff import handoff_key
from gateway.sessions.prelogin import MAX_VALUE, PreLoginSeal, PreLoginTooLarge
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    CONSOLE_HOST,
    PASSWORD,
    Browser,
    Page,
    Site,
)

KEY = b"k" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def signed(body: Any, key: bytes = KEY) -> str:
    """A cookie value with a genuine signature over whatever `body` is."""
    payload = b64(json.dumps(body).encode())
    mac = hmac.new(key, b"prelogin|" + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{b64(mac)}"


def state_of(value: str) -> dict[str, Any]:
    body = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    state: dict[str, Any] = body["d"]
    return state


async def settled_keys(site: Site) -> set[bytes | str]:
    """Redis's keys once the app's start-up writes are done (two equal reads in a row)."""
    seen: set[bytes | str] = set(await site.redis.keys("*"))
    for _ in range(30):
        await asyncio.sleep(0.1)
        now: set[bytes | str] = set(await site.redis.keys("*"))
        if now == seen:
            return now
        seen = now
    raise AssertionError("Redis keys never settled")


def cookieless(site: Site) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=site.ssl_context(), resolver=LoopbackResolver()),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept": "text/html"},
    )


async def test_a_flood_of_cookieless_page_views_writes_nothing_to_redis(site: Site) -> None:
    paths = ["/login", "/enrol", "/logout", "/login?next=/requests"]
    async with cookieless(site) as client:
        async with client.get(site.console("/login"), allow_redirects=False) as warm:
            assert warm.status == 200
        before = await settled_keys(site)

        async def view(path: str) -> tuple[int, str]:
            async with client.get(site.console(path), allow_redirects=False) as response:
                return response.status, response.headers.get("Set-Cookie", "")

        answers = [await view(path) for path in paths * 10]
        answers += await asyncio.gather(*(view(path) for path in paths * 10))
    assert all(status == 200 for status, _ in answers)
    assert set(await site.redis.keys("*")) == before
    assert await site.redis.dbsize() == len(before)
    assert all(cookie.startswith(f"{PRELOGIN}=") for _, cookie in answers)


async def test_the_password_step_keeps_nothing_in_redis_until_totp(
    site: Site, browser: Browser
) -> None:
    page = await browser.form(
        site.console("/login"), {"email": "alice@acme.example", "password": PASSWORD}
    )
    assert page.status == 303
    assert page.location == "/login/totp"
    assert await site.redis.keys(keys.console_session("*")) == []
    value = browser.cookie(PRELOGIN, CONSOLE_HOST)
    assert value is not None
    pending = state_of(value)["pending"]
    assert pending["principal"] == "member:acme:alice"
    # The proof names the password without helping anyone guess it offline: keyed.
    account = await site.accounts.store.require("member:acme:alice")
    assert account.password_hash not in value
    assert pending["proof"] != hashlib.sha256(account.password_hash.encode()).hexdigest()
    totp = await browser.get(site.console("/login/totp"))
    done = await browser.form(site.console("/login/totp"), {"code": site.code(ALICE_SECRET)}, totp)
    assert done.status == 303
    assert len(await site.redis.keys(keys.console_session("*"))) == 1
    assert (await browser.get(site.console("/"))).status == 200


async def test_a_login_form_posted_from_another_site_is_refused(site: Site) -> None:
    async with site.browser() as attacker, site.browser() as victim:
        lure = await attacker.get(site.console("/login"))
        fields = {"csrf_token": lure.csrf, "email": "sam@vendor.example", "password": PASSWORD}
        # SameSite=Lax: a cross-site POST carries no cookie; nor does the token help in a
        # browser whose own cookie names another one.
        bare = await victim.post(site.console("/login"), data=fields)
        await victim.get(site.console("/login"))
        own = await victim.post(site.console("/login"), data=fields)
        for page in (bare, own):
            assert page.status == 403
            assert "csrf_failed" in page.text
        assert victim.cookie("__Host-gw_console", CONSOLE_HOST) is None
    assert not await site.redis.exists(keys.password_failures_account("sam@vendor.example"))
    assert await site.redis.keys(keys.console_session("*")) == []


def altered_payload(value: str) -> str:
    payload, mac = value.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["d"]["csrf"] = "chosen-by-someone-else-aaaaaaaaaaaaaaaaaaaaaa"
    return f"{b64(json.dumps(body).encode())}.{mac}"


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"), id="mac"),
        pytest.param(altered_payload, id="payload"),
        pytest.param(lambda v: signed({"d": state_of(v), "e": 4e9}, b"x" * 32), id="key"),
        pytest.param(lambda v: v.replace(".", ""), id="no-mac"),
        pytest.param(lambda v: v + "." + v, id="two-dots"),
    ],
)
async def test_an_altered_prelogin_cookie_is_no_state(site: Site, spoil: Any) -> None:
    async with site.browser() as browser:
        page = await browser.get(site.console("/login"))
        value = browser.cookie(PRELOGIN, CONSOLE_HOST)
        assert value is not None
        spoiled = spoil(value)
        async with site.browser() as other:
            refused = await other.post(
                site.console("/login"),
                data={"csrf_token": page.csrf, "email": "alice@acme.example", "password": "x"},
                headers={"Cookie": f"{PRELOGIN}={spoiled}"},
            )
        assert refused.status == 403
        assert "csrf_failed" in refused.text
        # The genuine cookie still works (the refusal changed nothing).
        genuine = await browser.form(
            site.console("/login"), {"email": "alice@acme.example", "password": "wrong"}, page
        )
        assert genuine.status == 401


async def test_an_expired_prelogin_cookie_is_no_state(site: Site, browser: Browser) -> None:
    page = await browser.get(site.console("/login"))
    site.clock.advance(site.config.sessions.idle_timeout_s)
    late = await browser.form(
        site.console("/login"), {"email": "alice@acme.example", "password": PASSWORD}, page
    )
    assert late.status == 403
    assert "csrf_failed" in late.text
    assert not await site.redis.exists(keys.password_failures_account("alice@acme.example"))


async def test_a_sealed_state_never_names_a_login(site: Site) -> None:
    now = site.clock.now()
    forged = signed(
        {
            "d": {
                "csrf": "c" * 43,
                "principal": "member:acme:alice",
                "mfa_at": now,
                "login_at": now,
                "created_at": now,
                "last_seen": now,
                "epoch": 0,
            },
            "e": now + 600,
        },
        handoff_key(site.config.data_dir),
    )
    async with site.browser() as browser:
        page = await browser.get(site.console("/"), headers={"Cookie": f"{PRELOGIN}={forged}"})
        assert page.status == 303
        assert page.location == "/login"
        api = await browser.get(
            site.console("/.gateway/api/v1/me"),
            headers={"Cookie": f"{PRELOGIN}={forged}", "Accept": "application/json"},
        )
        assert api.status == 401
    assert await site.redis.keys(keys.console_session("*")) == []


async def test_a_return_address_too_long_to_remember_is_refused(
    site: Site, browser: Browser
) -> None:
    long = "a" * 2049
    page: Page = await browser.get(site.console(f"/login?return={quote(long)}"))
    assert page.status == 400
    assert "invalid_return" in page.text
    assert "Set-Cookie" not in page.headers


async def test_logout_drops_the_session_and_keeps_only_a_signed_form_token(
    site: Site, browser: Browser
) -> None:
    assert (await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)).status == 303
    form = await browser.get(site.console("/logout"))
    done = await browser.form(site.console("/logout"), {}, form)
    assert done.status == 200
    assert browser.cookie("__Host-gw_console", CONSOLE_HOST) is None
    assert browser.cookie(PRELOGIN, CONSOLE_HOST) is not None
    assert await site.redis.keys(keys.console_session("*")) == []


# --- the seal itself ------------------------------------------------------------------
def test_seal_round_trip_keeps_only_state_names() -> None:
    clock = ManualClock()
    seal = PreLoginSeal(KEY, clock, ttl_s=60)
    value = seal.seal({"csrf": "t", "next": "/x", "principal": "staff:sam", "mfa_at": 1.0})
    assert seal.open(value) == {"csrf": "t", "next": "/x"}
    clock.advance(59.9)
    assert seal.open(value) == {"csrf": "t", "next": "/x"}
    clock.advance(0.1)
    assert seal.open(value) is None
    assert PreLoginSeal(b"o" * 32, ManualClock(), ttl_s=60).open(value) is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "no-dot",
        "a.b.c",
        "é.x",
        "x" * (MAX_VALUE + 1),
        signed([1, 2]),
        signed({"d": [], "e": 4e9}),
        signed({"d": {"csrf": "t"}}),
        signed({"d": {"csrf": "t"}, "e": True}),
        signed({"d": {"csrf": "t"}, "e": "4000000000"}),
        signed({"d": {"csrf": "t"}, "e": 1.0}),
        signed("a string"),
        "!!!." + b64(hmac.new(KEY, b"prelogin|!!!", hashlib.sha256).digest()),
    ],
)
def test_malformed_values_are_no_state(value: str | None) -> None:
    assert PreLoginSeal(KEY, ManualClock(), ttl_s=60).open(value) is None


def test_a_state_too_large_for_a_cookie_is_refused() -> None:
    seal = PreLoginSeal(KEY, ManualClock(), ttl_s=60)
    with pytest.raises(PreLoginTooLarge):
        seal.seal({"next": "/" + "x" * MAX_VALUE})
    # The largest state a login may hold fits.
    step = {"principal": "member:" + "o" * 64 + ":" + "m" * 64, "at": 1e9, "epoch": 10**17}
    fits = {
        "csrf": "c" * 43,
        "return": "r" * 2048,
        "pending": {**step, "proof": "p" * 64},
        "enrol": {**step, "proof": "p" * 64, "token_hash": "h" * 64},
    }
    assert len(seal.seal(fits)) <= MAX_VALUE
