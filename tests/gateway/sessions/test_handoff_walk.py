"""The whole way in: routed host -> console login (password, enrolment, TOTP) -> hand-off
-> back on the routed host, ending at the proxied page's denial for lack of a grant."""

from __future__ import annotations

from tests.gateway.sessions.harness import ACME, CONSOLE_HOST, PASSWORD, Browser, Site


async def test_whole_login_with_enrolment_ends_at_no_grant(site: Site, browser: Browser) -> None:
    bob = await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await site.accounts.store.set_password(bob.key, PASSWORD)
    token = await site.accounts.enrolment.issue(bob.key)

    # 1. The routed host sends the browser to the console with a signed return address.
    first = await browser.get(site.routed(ACME, "/contacts?page=2"))
    assert first.status == 303
    assert first.location.startswith(site.console("/login?return="))
    assert site.upstream.paths == []

    # 2. Password: the account has no authenticator yet, so the enrolment form follows.
    login_page = await browser.get(first.location)
    assert login_page.status == 200
    after_password = await browser.form(
        site.console("/login"), {"email": "bob@acme.example", "password": PASSWORD}, login_page
    )
    assert after_password.status == 200
    assert 'name="token"' in after_password.text

    # 3. Enrolment: token + password -> otpauth URI and an SVG QR code.
    qr = await browser.form(
        site.console("/enrol"),
        {"email": "bob@acme.example", "password": PASSWORD, "token": token},
        after_password,
    )
    assert qr.status == 200, qr.text
    assert "<svg" in qr.text
    assert "otpauth://totp/" in qr.text
    secret = qr.text.split('id="secret">')[1].split("<")[0]
    assert not (await site.accounts.store.require(bob.key)).enrolled

    # 4. One valid code activates the secret and logs in; back to the routed host.
    done = await browser.form(site.console("/enrol/confirm"), {"code": site.code(secret)}, qr)
    assert done.status == 303, done.text
    assert done.location.startswith(site.routed(ACME, "/.gateway/auth?code="))
    assert (await site.accounts.store.require(bob.key)).enrolled
    assert browser.cookie("__Host-gw_console", CONSOLE_HOST)

    # 5. The routed host exchanges the code for its own host-only cookie.
    exchanged = await browser.get(done.location)
    assert exchanged.status == 303
    assert exchanged.location == "/contacts?page=2"
    set_cookie = exchanged.headers["Set-Cookie"]
    assert set_cookie.startswith("__Host-gw_app=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in set_cookie
    assert "Domain" not in set_cookie

    # 6. Logged in, MFA fresh, but no grant: the policy stage's clear denial.
    final = await browser.get(site.routed(ACME, exchanged.location))
    assert final.status == 403
    assert "no_grant" in final.text
    assert site.upstream.paths == []
    events = await site.account_events()
    assert ("enrolment", "success") in events
    assert ("login", "success") in events


async def test_login_of_enrolled_user_and_api_client_sees_401(site: Site, browser: Browser) -> None:
    first = await browser.get(site.routed(ACME, "/x"))
    await browser.get(first.location)
    done = await browser.login("alice@acme.example", PASSWORD, "JBSWY3DPEHPK3PXPALICETESTSECRET2")
    assert done.status == 303
    back = await browser.get(done.location)
    assert back.location == "/x"
    final = await browser.get(site.routed(ACME, "/x"), headers={"Accept": "application/json"})
    assert final.status == 403
    assert '"error": "no_grant"' in final.text
    # Without a cookie an API client is told 401, not redirected.
    async with site.browser() as anonymous:
        api = await anonymous.get(site.routed(ACME, "/x"), headers={"Accept": "application/json"})
        assert api.status == 401
        assert "WWW-Authenticate" in api.headers
        assert '"error": "login_required"' in api.text


async def test_account_disabled_during_enrolment_gets_no_login(
    site: Site, browser: Browser
) -> None:
    bob = await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await site.accounts.store.set_password(bob.key, PASSWORD)
    token = await site.accounts.enrolment.issue(bob.key)
    page = await browser.get(site.console("/enrol"))
    qr = await browser.form(
        site.console("/enrol"),
        {"email": "bob@acme.example", "password": PASSWORD, "token": token},
        page,
    )
    assert qr.status == 200, qr.text
    secret = qr.text.split('id="secret">')[1].split("<")[0]
    # An admin disables the account while its QR code is on screen.
    await site.accounts.store.set_disabled(bob.key, True)

    done = await browser.form(site.console("/enrol/confirm"), {"code": site.code(secret)}, qr)
    assert done.status == 403
    assert "disabled" in done.text
    assert (await browser.get(site.console("/"))).location == "/login"
    for key in await site.redis.keys("gw:session:*"):
        assert b"principal" not in (await site.redis.get(key) or b"")
    assert ("login", "success") not in await site.account_events()
    assert not (await site.accounts.store.require(bob.key)).enrolled


async def test_password_reset_during_enrolment_logs_nobody_in(site: Site, browser: Browser) -> None:
    bob = await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await site.accounts.store.set_password(bob.key, PASSWORD)
    token = await site.accounts.enrolment.issue(bob.key)
    page = await browser.get(site.console("/enrol"))
    qr = await browser.form(
        site.console("/enrol"),
        {"email": "bob@acme.example", "password": PASSWORD, "token": token},
        page,
    )
    assert qr.status == 200, qr.text
    secret = qr.text.split('id="secret">')[1].split("<")[0]
    # An admin resets the password just proven while its QR code is on screen.
    await site.accounts.store.set_password(bob.key, "a-brand-new-password-42")

    done = await browser.form(site.console("/enrol/confirm"), {"code": site.code(secret)}, qr)
    assert done.status == 403
    assert "password has changed" in done.text
    assert (await browser.get(site.console("/"))).location == "/login"
    for key in await site.redis.keys("gw:session:*"):
        assert b"principal" not in (await site.redis.get(key) or b"")
    assert ("login", "success") not in await site.account_events()
    assert not (await site.accounts.store.require(bob.key)).enrolled
