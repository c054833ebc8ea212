"""Logins racing "end every session", and who the login audit records name, over real HTTPS."""

from __future__ import annotations

import asyncio
from typing import Any

from audit.frame import decode_frame
from gateway import keys
from gateway.accounts.model import text
from tests.gateway.sessions.harness import (
    ACME,
    ALICE_SECRET,
    CONSOLE_HOST,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Site,
)

ALICE = "member:acme:alice"
API = "/.gateway/api/v1"
CONSOLE = "__Host-gw_console"
APP = "__Host-gw_app"


async def account_bodies(site: Site) -> list[dict[str, Any]]:
    """Every account event's record body in the audit stream, in order."""
    entries: Any = await site.redis.xrange(keys.audit_stream())
    bodies = [decode_frame(fields[b"f"]).decode_body() for _, fields in entries]
    return [body for body in bodies if body.get("record") == "account"]


async def event(site: Site, action: str, outcome: str = "failure") -> dict[str, Any]:
    found = [
        body
        for body in await account_bodies(site)
        if body["event"]["action"] == action and body["event"]["outcome"] == outcome
    ]
    assert len(found) == 1, found
    return found[-1]


async def no_logged_in_session(site: Site, principal_key: str = ALICE) -> bool:
    for key in await site.redis.keys("gw:session:*"):
        if b'"principal"' in (await site.redis.get(key) or b""):
            return False
    return await site.redis.scard(keys.principal_sessions(principal_key)) == 0


async def password_step(site: Site, browser: Browser, email: str = "alice@acme.example") -> None:
    page = await browser.form(site.console("/login"), {"email": email, "password": PASSWORD})
    assert page.status == 303, page.text


async def test_sessions_ended_between_password_and_totp_refuse_the_login(
    site: Site, browser: Browser
) -> None:
    await password_step(site, browser)
    # An admin ends every session of the account while the TOTP form is on screen.
    assert await site.accounts.store.end_sessions(ALICE) == 0
    totp = await browser.get(site.console("/login/totp"))
    done = await browser.form(site.console("/login/totp"), {"code": site.code(ALICE_SECRET)}, totp)
    assert done.status == 409
    assert "log in again" in done.text
    assert await no_logged_in_session(site)
    assert (await browser.get(site.console("/"))).location == "/login"
    refused = await event(site, "login")
    assert refused["event"]["reason"] == "sessions_ended"
    assert refused["user"]["id"] == "alice"
    assert ("login", "success") not in await site.account_events()
    # Nothing is locked or spent beyond the code: a fresh login works.
    site.clock.advance(30)
    again = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    assert again.status == 303, again.text
    assert await site.redis.scard(keys.principal_sessions(ALICE)) == 1


async def test_sessions_ended_during_enrolment_refuse_the_login(
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
    await site.accounts.store.end_sessions(bob.key)
    done = await browser.form(site.console("/enrol/confirm"), {"code": site.code(secret)}, qr)
    assert done.status == 409
    assert await no_logged_in_session(site, bob.key)
    assert ("login", "success") not in await site.account_events()


async def test_routed_host_refuses_a_session_of_an_old_epoch(site: Site, browser: Browser) -> None:
    first = await browser.get(site.routed(ACME, "/p"))
    await browser.get(first.location)
    done = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
    back = await browser.get(done.location)
    assert back.status == 303
    assert browser.cookie(APP, ACME) is not None
    seen = await browser.get(site.routed(ACME, "/p"))
    assert seen.status != 303  # logged in (the grant stage answers next)
    # The counter moves without anything being deleted (as if a session were written
    # back by some other path): the session stage refuses the login all the same.
    await site.redis.incr(keys.session_epoch(ALICE))
    again = await browser.get(site.routed(ACME, "/p"))
    assert again.status == 303
    assert again.location.startswith(site.console("/login?return="))
    assert (await browser.get(site.console("/"))).location == "/login"


async def test_api_login_racing_the_end_of_all_sessions(site: Site) -> None:
    # Whatever the interleaving, a login either fails cleanly (409) or its session is
    # ended: after both, no session of the epoch before the end is alive.
    for round_ in range(10):
        site.clock.advance(30)  # a fresh TOTP step per login
        async with site.browser() as client:
            before = int(await site.redis.get(keys.session_epoch(ALICE)) or 0)

            async def log_in(client: Browser = client) -> tuple[int, dict[str, Any]]:
                async with client.session.post(
                    site.console(f"{API}/login"),
                    json={
                        "email": "alice@acme.example",
                        "password": PASSWORD,
                        "totp": site.code(ALICE_SECRET),
                    },
                    headers={"Accept": "application/json"},
                ) as answer:
                    return answer.status, await answer.json(content_type=None)

            async def end_all(delay: float = 0.002 * round_) -> int:
                await asyncio.sleep(delay)
                return await site.accounts.store.end_sessions(ALICE)

            (status, body), _ = await asyncio.gather(log_in(), end_all())
            assert status in (200, 409), body
            if status == 409:
                assert body["error"] == "sessions_ended"
            async with client.session.get(
                site.console(f"{API}/me"), headers={"Accept": "application/json"}
            ) as me:
                alive = me.status == 200
            if alive:
                # Only a login that read the epoch after the end may live on.
                stored = [
                    await site.redis.get(keys.console_session(text(sid)))
                    for sid in await site.redis.smembers(keys.principal_sessions(ALICE))
                ]
                assert all(f'"epoch": {before + 1}'.encode() in (s or b"") for s in stored)
            await site.accounts.store.end_sessions(ALICE)
            assert await no_logged_in_session(site)


async def test_failed_totp_after_a_correct_password_names_the_account(
    site: Site, browser: Browser
) -> None:
    await password_step(site, browser)
    wrong = "000000" if site.code(ALICE_SECRET) != "000000" else "111111"
    page = await browser.form(site.console("/login/totp"), {"code": wrong})
    assert page.status == 401
    failed = await event(site, "login.totp")
    success_shape = {"id": "alice", "email": "alice@acme.example", "full_name": "Alice"}
    assert {k: failed["user"][k] for k in success_shape} == success_shape
    assert failed["user"]["domain"] == "acme"
    assert failed["user"]["roles"] == ["member", "admin"]
    assert failed["event"]["reason"] == "invalid_totp"


async def test_failed_api_totp_names_the_account_like_the_console(
    site: Site, browser: Browser
) -> None:
    async with browser.session.post(
        site.console(f"{API}/login"),
        json={"email": "sam@vendor.example", "password": PASSWORD, "totp": "12345x"},
        headers={"Accept": "application/json"},
    ) as answer:
        assert answer.status == 401
    failed = await event(site, "login.totp")
    assert failed["user"]["id"] == "sam"
    assert failed["user"]["email"] == "sam@vendor.example"
    assert failed["user"]["roles"] == ["staff"]


async def test_unknown_user_failure_names_only_what_was_typed(site: Site, browser: Browser) -> None:
    typed = "Nobody@Acme.example"
    page = await browser.form(
        site.console("/login"), {"email": typed, "password": "not-the-password"}
    )
    assert page.status == 401
    failed = await event(site, "login.password")
    assert "user" not in failed
    assert failed["gateway"]["details"] == {"email": typed.lower()}


async def test_failed_step_up_names_the_account(site: Site, browser: Browser) -> None:
    done = await browser.login("sam@vendor.example", PASSWORD, SAM_SECRET)
    assert done.status == 303
    step = await browser.get(site.console("/step-up"))
    assert step.status == 200
    page = await browser.form(site.console("/step-up"), {"code": "99999x"}, step)
    assert page.status == 401
    failed = await event(site, "mfa.step_up")
    assert failed["user"]["id"] == "sam"
    assert failed["user"]["email"] == "sam@vendor.example"
    assert browser.cookie(CONSOLE, CONSOLE_HOST) is not None  # a wrong code ends nothing


async def test_refusal_after_a_correct_password_names_the_account(
    site: Site, browser: Browser
) -> None:
    await site.accounts.store.set_disabled(ALICE, True)
    wrong = await browser.form(
        site.console("/login"), {"email": "alice@acme.example", "password": "not-the-password"}
    )
    assert wrong.status == 401
    right = await browser.form(
        site.console("/login"), {"email": "alice@acme.example", "password": PASSWORD}
    )
    assert right.status == 403
    failures = [
        body for body in await account_bodies(site) if body["event"]["action"] == "login.password"
    ]
    assert [body["event"]["reason"] for body in failures] == [
        "invalid_credentials",
        "account_disabled",
    ]
    assert "user" not in failures[0]  # a wrong password proves nothing about who typed it
    assert failures[1]["user"]["id"] == "alice"
    assert failures[1]["user"]["domain"] == "acme"
