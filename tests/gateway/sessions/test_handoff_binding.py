"""A hand-off code works only in the browser that was sent to log in (no login CSRF)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
import redis.asyncio as aioredis

from gateway.clock import ManualClock
from gateway.cookies import is_gateway_cookie
from gateway.sessions.handoff import HandoffCodes, ReturnAddresses, browser_binding, new_nonce
from tests.gateway.sessions.harness import ACME, ALICE_SECRET, PASSWORD, Browser, Site
from tests.gateway.sessions.test_routed_hosts import APP, handoff_code

HANDOFF = "__Host-gw_handoff"
KEY = bytes(range(32))


async def test_a_code_planted_in_another_browser_is_refused(site: Site, browser: Browser) -> None:
    # Someone logs in through the routed host and, instead of following their own
    # hand-off, sends the link to a victim: the victim must not end up in their session.
    code = await handoff_code(site, browser)
    async with site.browser() as victim:
        planted = await victim.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
        assert planted.status == 403
        assert "invalid_handoff" in planted.text
        assert victim.cookie(APP, ACME) is None
        assert planted.headers.get("Set-Cookie") is None
    # The code was spent by the attempt: the one who leaked it cannot use it either.
    again = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
    assert again.status == 403


async def test_the_browser_sent_to_log_in_completes_the_handoff(
    site: Site, browser: Browser
) -> None:
    first = await browser.get(site.routed(ACME, "/p"))
    assert first.status == 303
    nonce = browser.cookie(HANDOFF, ACME)
    assert nonce is not None
    attributes = {a.strip().split("=")[0].lower() for a in first.headers["Set-Cookie"].split(";")}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= attributes
    assert "domain" not in attributes  # __Host-: host-only
    # The binding lives only on the routed host; the console never sees it.
    assert browser.cookie(HANDOFF, "gateway.localhost") is None
    assert nonce not in first.location
    # A second redirect (another tab) keeps the browser's nonce: both hand-offs can finish.
    await browser.get(site.routed(ACME, "/other"))
    assert browser.cookie(HANDOFF, ACME) == nonce
    await browser.get(first.location)
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    back = await browser.get(done.location)
    assert back.status == 303
    assert browser.cookie(APP, ACME) is not None
    # Kept after the hand-off, until it expires: other tabs' hand-offs still need it.
    assert browser.cookie(HANDOFF, ACME) == nonce
    assert (await browser.get(site.routed(ACME, "/p"))).status == 403  # in, but no grant yet


async def test_a_second_tab_completes_its_handoff_after_the_first(
    site: Site, browser: Browser
) -> None:
    # Two tabs of one browser were both sent to log in; the first one's hand-off finishes
    # first, then the second tab's code comes back and must be accepted too.
    first = await browser.get(site.routed(ACME, "/p"))
    second = await browser.get(site.routed(ACME, "/other"))
    third = await browser.get(site.routed(ACME, "/third"))
    assert first.status == second.status == third.status == 303
    await browser.get(first.location)
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert (await browser.get(done.location)).status == 303
    again = await browser.get(second.location)  # already logged in: straight to a code
    assert again.status == 303, again.text
    assert again.location.startswith(site.routed(ACME, "/.gateway/auth?code="))
    back = await browser.get(again.location)
    assert back.status == 303, back.text
    assert back.location.endswith("/other")
    # The kept nonce still binds codes to this browser only: a third tab's code fails
    # in another browser.
    late = await browser.get(third.location)
    assert late.location.startswith(site.routed(ACME, "/.gateway/auth?code="))
    async with site.browser() as other:
        planted = await other.get(late.location)
        assert planted.status == 403
        assert "invalid_handoff" in planted.text
        assert other.cookie(APP, ACME) is None


def test_the_binding_cookie_is_a_gateway_cookie() -> None:
    # Never forwarded upstream, and an upstream may not set it (gateway.proxy.headers).
    assert is_gateway_cookie(HANDOFF)
    assert is_gateway_cookie(HANDOFF.upper())


async def test_codes_and_addresses_need_the_browser_binding(
    redis: aioredis.Redis, clock: ManualClock
) -> None:
    nonce = new_nonce()
    binding = str(browser_binding(nonce))
    codes = HandoffCodes(redis, clock, ttl_s=30)
    for presented in (None, "", "short", new_nonce(), nonce + "x", nonce.upper()):
        code = await codes.issue("sid", "staff:sam", "acme.example", "/", binding=binding, port=443)
        assert await codes.redeem(code, "acme.example", presented, port=443) is None
        assert await codes.redeem(code, "acme.example", nonce, port=443) is None  # spent by the try
    code = await codes.issue("sid", "staff:sam", "acme.example", "/", binding=binding, port=443)
    grant = await codes.redeem(code, "acme.example", nonce, port=443)
    assert grant is not None
    assert grant.binding == binding
    for bad in ("", "0" * 63, "g" * 64, binding.upper()):
        with pytest.raises(ValueError, match="binding"):
            await codes.issue("sid", "staff:sam", "acme.example", "/", binding=bad, port=443)
        with pytest.raises(ValueError, match="binding"):
            ReturnAddresses(KEY, clock).sign("https://acme.example/", binding=bad)
    assert browser_binding(None) is None
    assert browser_binding("x" * 43 + "!") is None


def test_a_signed_address_without_a_binding_is_refused(clock: ManualClock) -> None:
    # An address signed with the right key but naming no browser (e.g. made before
    # bindings existed) is refused: the console could not bind its code to anyone.
    addresses = ReturnAddresses(KEY, clock)
    body = json.dumps({"u": "https://acme.example/", "e": clock.now() + 60}).encode()
    payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
    mac = hmac.new(KEY, b"return|" + payload.encode(), hashlib.sha256).digest()
    token = payload + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert addresses.verify(token, lambda host: host == "acme.example") is None
    bound = addresses.sign("https://acme.example/", binding=str(browser_binding(new_nonce())))
    assert addresses.verify(bound, lambda host: host == "acme.example") == "https://acme.example/"


@pytest.mark.parametrize("port", ["9443", "443", ""])
async def test_a_code_is_refused_on_another_port_of_its_host(
    site: Site, browser: Browser, port: str
) -> None:
    # The same host name on another port may be another service: the code is not its.
    code = await handoff_code(site, browser)
    host = f"{ACME}:{port}" if port else ACME  # no port: 443, since this is https
    elsewhere = await browser.get(
        site.routed(ACME, f"/.gateway/auth?code={code}"), headers={"Host": host}
    )
    assert elsewhere.status == 403
    assert "invalid_handoff" in elsewhere.text
    assert browser.cookie(APP, ACME) is None
    # Spent by the try, even on its own port afterwards.
    again = await browser.get(site.routed(ACME, f"/.gateway/auth?code={code}"))
    assert again.status == 403


async def test_a_code_is_accepted_with_its_port_spelled_out(site: Site, browser: Browser) -> None:
    code = await handoff_code(site, browser)
    own = await browser.get(
        site.routed(ACME, f"/.gateway/auth?code={code}"),
        headers={"Host": f"{ACME.upper()}:{site.port}"},
    )
    assert own.status == 303
    assert browser.cookie(APP, ACME) is not None
