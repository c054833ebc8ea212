"""Staff file access requests from the console's requests page, through the store's rules.

Over real HTTPS with the real store: a good form files one pending request and redirects to
it; every refusal shows the form again with the reason, the values typed and the API's
status, and files nothing; members never see the form and cannot post it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from html import unescape
from typing import Any

import pytest
from playwright.async_api import Browser as Chromium
from playwright.async_api import async_playwright

from gateway import keys
from gateway.access.model import AccessRequest
from gateway.access.service import ACCESS
from gateway.access.settings import load_settings, save_settings
from gateway.accounts.totp import code_at
from tests.gateway.access.conftest import ALICE, SAM
from tests.gateway.console.test_browser_login import ARGS, CHROMIUM
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Page,
    Site,
)

GOOD = {
    "org": "acme",
    "member": "bob",
    "justification": "ticket 42: the export button fails for bob",
    "duration_s": "900",
    "scope": "read",
}


@pytest.fixture
async def people(site: Site) -> Site:
    """acme has bob (impersonable) and dave (not); alice (admin) and sam come with the site."""
    await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    await site.accounts.store.put_member(
        "acme", "dave", "dave@acme.example", "Dave", "member", impersonable=False
    )
    return site


@pytest.fixture
async def sam(people: Site) -> AsyncIterator[Browser]:
    client = people.browser()
    answer = await client.login("sam@vendor.example", PASSWORD, SAM_SECRET)
    assert answer.status == 303, answer.text
    yield client
    await client.close()


async def filed_by_sam(site: Site) -> list[AccessRequest]:
    return await site.app[ACCESS].store.search(requester=SAM)


def error_of(page: Page) -> str:
    found = re.search(r'id="error">([^<]*)</p>', page.text)
    assert found is not None, page.text
    return unescape(found.group(1))


def typed_value(page: Page, element_id: str) -> str:
    found = re.search(rf'id="{element_id}" name="[a-z_]+" value="([^"]*)"', page.text)
    assert found is not None, page.text
    return unescape(found.group(1))


def typed_justification(page: Page) -> str:
    found = re.search(r'id="f-justification"[^>]*>([^<]*)</textarea>', page.text)
    assert found is not None, page.text
    return unescape(found.group(1))


async def submit(client: Browser, site: Site, fields: dict[str, str]) -> Page:
    """Post the form with the CSRF token of a fresh requests page."""
    return await client.form(
        site.console("/requests/new"), fields, await requests_page(client, site)
    )


async def requests_page(client: Browser, site: Site) -> Page:
    page = await client.get(site.console("/requests"))
    assert page.status == 200, page.text
    return page


# --- success --------------------------------------------------------------------------
async def test_staff_file_through_the_form_and_land_on_the_request(
    people: Site, sam: Browser
) -> None:
    listing = await requests_page(sam, people)
    assert 'id="file"' in listing.text
    assert 'action="/requests/new"' in listing.text
    fields = {**GOOD, "justification": "ticket 42:\r\nthe export button fails for bob"}
    done = await sam.form(people.console("/requests/new"), fields, listing)
    assert done.status == 303, done.text
    filed = await filed_by_sam(people)
    assert len(filed) == 1
    request = filed[0]
    assert done.location == f"/requests/{request.id}"
    assert (request.org, request.member, request.state.value) == ("acme", "bob", "pending")
    assert request.justification == "ticket 42:\nthe export button fails for bob"
    stored = await people.redis.hgetall(keys.access_request(request.id))
    assert stored[b"duration_s"] == b"900"
    assert stored[b"scope"] == b"read"
    page = await sam.get(people.console(done.location))
    assert page.status == 200
    assert "the export button fails for bob" in page.text
    assert "pending" in page.text

    # The approver sees it pending, and no filing form on her side.
    async with people.browser() as alice:
        assert (await alice.login("alice@acme.example", PASSWORD, ALICE_SECRET)).status == 303
        theirs = await requests_page(alice, people)
        assert f"/requests/{request.id}" in theirs.text
        assert 'id="file"' not in theirs.text
        detail = await alice.get(people.console(f"/requests/{request.id}"))
        assert re.search(r'id="state">pending', detail.text)


async def test_write_scope_and_whitespace_around_values(people: Site, sam: Browser) -> None:
    fields = {**GOOD, "org": " acme ", "member": "bob ", "duration_s": " 60 ", "scope": "write"}
    done = await submit(sam, people, fields)
    assert done.status == 303, done.text
    (request,) = await filed_by_sam(people)
    stored = await people.redis.hgetall(keys.access_request(request.id))
    assert (stored[b"duration_s"], stored[b"scope"]) == (b"60", b"write")


# --- refusals: the store's rules, shown on the form ----------------------------------
async def _ticket_rule(site: Site) -> None:
    settings = await load_settings(site.redis, "acme")
    await save_settings(site.redis, "acme", settings.merged({"ticket_pattern": "[A-Z]+-[0-9]+"}))


async def _live_grant(site: Site) -> None:
    store = site.app[ACCESS].store
    first = await store.file(
        SAM, org="acme", member="bob", justification=GOOD["justification"],
        duration_s=900, scope="read",
    )  # fmt: skip
    await store.approve(first.id, ALICE, comment="ok")


async def _nothing(site: Site) -> None:
    return None


Setup = Callable[[Site], Awaitable[None]]

REFUSALS: list[tuple[str, dict[str, str], Setup, int, str]] = [
    ("zero duration", {"duration_s": "0"}, _nothing, 422, "must be above 0"),
    ("no duration", {"duration_s": ""}, _nothing, 422, "expected whole seconds"),
    ("words for a duration", {"duration_s": "an hour"}, _nothing, 422, "whole seconds"),
    ("superscript digit", {"duration_s": "²"}, _nothing, 422, "whole seconds"),
    ("negative duration", {"duration_s": "-5"}, _nothing, 422, "whole seconds"),
    ("over the org's maximum", {"duration_s": "86400"}, _nothing, 422, "allows at most 14400"),
    ("short justification", {"justification": "  because  "}, _nothing, 422, "at least 10"),
    ("ticket rule", {}, _ticket_rule, 422, "must name a ticket matching"),
    ("unknown org", {"org": "initech"}, _nothing, 422, "no org 'initech'"),
    ("org of bad syntax", {"org": "ac me"}, _nothing, 422, "expected [A-Za-z0-9._-]"),
    ("unknown member", {"member": "zed"}, _nothing, 422, "no member 'zed' in acme"),
    ("member not impersonable", {"member": "dave"}, _nothing, 422, "dave may not be"),
    ("an admin", {"member": "alice"}, _nothing, 422, "does not allow acting as an admin"),
    ("another org's member", {"org": "beta"}, _nothing, 422, "no member 'bob' in beta"),
    ("bad scope", {"scope": "admin"}, _nothing, 422, "expected read or write"),
    ("live grant exists", {}, _live_grant, 409, "a live grant for this org already exists"),
    ("unknown field", {"approved": "yes"}, _nothing, 422, "unknown field(s) approved"),
]


@pytest.mark.parametrize(
    ("change", "setup", "status", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
async def test_refusal_shows_the_form_again_and_files_nothing(
    people: Site,
    sam: Browser,
    change: dict[str, str],
    setup: Setup,
    status: int,
    reason: str,
) -> None:
    await setup(people)
    before = {r.id for r in await filed_by_sam(people)}
    fields = {**GOOD, "justification": "ticket 7: <b>bold</b> & more text", **change}
    refused = await submit(sam, people, fields)
    assert refused.status == status, refused.text
    assert reason in error_of(refused)
    assert {r.id for r in await filed_by_sam(people)} == before
    # The form again, with what was typed (escaped, never markup) and a fresh CSRF token.
    assert 'id="file"' in refused.text
    assert refused.csrf
    assert typed_value(refused, "f-org") == fields["org"]
    assert typed_value(refused, "f-member") == fields["member"]
    assert typed_value(refused, "f-duration") == fields["duration_s"]
    assert typed_justification(refused) == fields["justification"]
    assert "<b>bold</b>" not in refused.text


async def test_a_refused_form_can_be_corrected_and_sent_again(people: Site, sam: Browser) -> None:
    refused = await submit(sam, people, {**GOOD, "duration_s": "0"})
    assert refused.status == 422
    done = await sam.form(people.console("/requests/new"), GOOD, refused)
    assert done.status == 303, done.text
    assert len(await filed_by_sam(people)) == 1


# --- oversized and hostile input -------------------------------------------------------
OVERSIZED = [
    ("org", "a" * 65, "org: expected at most 64 characters"),
    ("member", "b" * 5000, "member: expected at most 64 characters"),
    ("duration_s", "9" * 5000, "duration_s: expected at most 12 characters"),
    ("scope", "w" * 17, "scope: expected at most 16 characters"),
    ("justification", "ticket 1 " + "x" * 2000, "justification: at most 2000 characters"),
]


@pytest.mark.parametrize(("name", "value", "reason"), OVERSIZED, ids=[o[0] for o in OVERSIZED])
async def test_oversized_field_is_refused_and_files_nothing(
    people: Site, sam: Browser, name: str, value: str, reason: str
) -> None:
    refused = await submit(sam, people, {**GOOD, name: value})
    assert refused.status == 422, refused.text
    assert reason in error_of(refused)
    assert value not in refused.text  # not echoed back whole
    assert await filed_by_sam(people) == []


async def test_control_characters_in_an_id_are_refused(people: Site, sam: Browser) -> None:
    refused = await submit(sam, people, {**GOOD, "member": "bob\x00"})
    assert refused.status == 422
    assert "member: expected no control characters" in error_of(refused)
    assert await filed_by_sam(people) == []


async def test_a_body_past_the_form_limit_is_413(people: Site, sam: Browser) -> None:
    limit = people.config.limits.max_form_bytes
    refused = await submit(sam, people, {**GOOD, "justification": "x" * limit})
    assert refused.status == 413
    assert f"over {limit} bytes" in refused.text
    assert await filed_by_sam(people) == []


@pytest.mark.parametrize(
    "body",
    [b"org=acme&org=beta", b"\xff\xfe=1", b"a=%zz&&&==", "&".join(["f=1"] * 20).encode()],
    ids=["repeated field", "not ascii", "malformed", "too many fields"],
)
async def test_malformed_form_is_400_and_files_nothing(
    people: Site, sam: Browser, body: bytes
) -> None:
    page = await requests_page(sam, people)
    data = f"csrf_token={page.csrf}&".encode() + body
    refused = await sam.post(
        people.console("/requests/new"),
        data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert refused.status == 400, refused.text
    assert await filed_by_sam(people) == []


async def test_json_instead_of_a_form_is_415(people: Site, sam: Browser) -> None:
    refused = await sam.post(people.console("/requests/new"), json=GOOD)
    assert refused.status == 415
    assert await filed_by_sam(people) == []


# --- CSRF, members, strangers ---------------------------------------------------------
@pytest.mark.parametrize("token", [None, "", "forged-token"], ids=["missing", "empty", "wrong"])
async def test_without_the_csrf_token_nothing_is_filed(
    people: Site, sam: Browser, token: str | None
) -> None:
    data: dict[str, Any] = dict(GOOD)
    if token is not None:
        data["csrf_token"] = token
    refused = await sam.post(people.console("/requests/new"), data=data)
    assert refused.status == 403
    assert "did not come from this console" in unescape(refused.text)
    assert await filed_by_sam(people) == []


async def test_a_member_never_sees_nor_posts_the_form(people: Site) -> None:
    async with people.browser() as alice:
        assert (await alice.login("alice@acme.example", PASSWORD, ALICE_SECRET)).status == 303
        page = await requests_page(alice, people)
        assert 'id="file"' not in page.text
        home = await alice.get(people.console("/"))
        assert 'id="file-link"' not in home.text
        refused = await alice.form(people.console("/requests/new"), GOOD, page)
        assert refused.status == 403
        assert "only vendor staff" in refused.text
    assert await people.app[ACCESS].store.search(org="acme") == []


async def test_without_a_login_the_post_goes_to_the_login(people: Site) -> None:
    async with people.browser() as stranger:
        answer = await stranger.post(people.console("/requests/new"), data=GOOD)
        assert answer.status == 303
        assert answer.location.startswith("/login")
    assert await people.app[ACCESS].store.search(org="acme") == []


# --- concurrency ----------------------------------------------------------------------
async def test_concurrent_posts_file_one_request_each_or_refuse(people: Site, sam: Browser) -> None:
    page = await requests_page(sam, people)
    url = people.console("/requests/new")
    answers = await asyncio.gather(
        *(sam.post(url, data={"csrf_token": page.csrf, **GOOD}) for _ in range(6))
    )
    assert {a.status for a in answers} == {303}
    filed = await filed_by_sam(people)
    assert sorted(a.location for a in answers) == sorted(f"/requests/{r.id}" for r in filed)
    assert all(r.state.value == "pending" for r in filed)


# --- a real browser -------------------------------------------------------------------
@pytest.fixture
async def chromium() -> AsyncIterator[Chromium]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.mark.browser
async def test_sam_files_in_chromium_and_alice_sees_it_pending(
    people: Site, chromium: Chromium
) -> None:
    async def log_in(email: str, secret: str) -> Any:
        context = await chromium.new_context(ignore_https_errors=True)
        page = await context.new_page()
        page.set_default_timeout(15_000)
        await page.goto(people.console("/requests"))
        await page.fill("#email", email)
        await page.fill("#password", PASSWORD)
        await page.click("#submit")
        await page.wait_for_selector("#code")
        await page.fill("#code", code_at(secret, people.clock.now()))
        await page.click("#submit")
        await page.wait_for_url(people.console("/requests"))
        return context, page

    sam_context, sam = await log_in("sam@vendor.example", SAM_SECRET)
    await sam.fill("#f-org", "acme")
    await sam.fill("#f-member", "bob")
    await sam.fill("#f-justification", "ticket 9: export button")
    await sam.fill("#f-duration", "0")
    await sam.select_option("#f-scope", "write")
    await sam.click("#f-submit")
    # Refused: the reason, and what sam typed is still there to correct.
    await sam.wait_for_selector("#error")
    assert "must be above 0" in await sam.inner_text("#error")
    assert await sam.input_value("#f-justification") == "ticket 9: export button"
    assert await sam.input_value("#f-scope") == "write"
    await sam.fill("#f-duration", "1800")
    await sam.click("#f-submit")
    await sam.wait_for_selector("#request")
    (filed,) = await filed_by_sam(people)
    assert sam.url == people.console(f"/requests/{filed.id}")
    assert (await sam.inner_text("#state")).strip() == "pending"

    alice_context, alice = await log_in("alice@acme.example", ALICE_SECRET)
    await alice.click(f'a[href="/requests/{filed.id}"]')
    await alice.wait_for_selector("#approve")
    assert "ticket 9: export button" in await alice.inner_text("#justification")
    assert (await alice.inner_text("#state")).strip() == "pending"
    await sam_context.close()
    await alice_context.close()
