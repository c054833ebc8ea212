"""Console forms and JSON API bodies under hostile delivery, over real HTTPS.

A body that arrives in several pieces is read whole (or refused whole): nothing typed is
cut off silently, and a body over the limit is refused however it is sent. JSON that only
Python's parser would take (a key twice, NaN, a lone surrogate, nesting past its depth) is
a clear 400 that changes nothing, and no API answer may be kept by a cache.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest

from gateway.access.service import ACCESS
from gateway.accounts.totp import code_at
from tests.gateway.access.conftest import SAM
from tests.gateway.sessions.harness import PASSWORD, SAM_SECRET, Browser, Site

API = "/.gateway/api/v1"


async def pieces(*parts: bytes, pause_s: float = 0.05) -> AsyncIterator[bytes]:
    """A request body sent chunk by chunk, with a pause so the server sees each apart."""
    for part in parts:
        yield part
        await asyncio.sleep(pause_s)


async def test_a_json_login_sent_in_pieces_is_read_whole(site: Site, browser: Browser) -> None:
    body = json.dumps(
        {
            "email": "sam@vendor.example",
            "password": PASSWORD,
            "totp": code_at(SAM_SECRET, site.clock.now()),
        }
    ).encode()
    async with browser.session.post(
        site.console(f"{API}/login"),
        data=pieces(body[:10], body[10:30], body[30:]),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    ) as response:
        answer = await response.json()
        assert response.status == 200, answer
    assert answer["principal"]["id"] == "sam"


async def test_a_filing_form_sent_in_pieces_keeps_its_whole_justification(
    site: Site, browser: Browser
) -> None:
    await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    answer = await browser.login("sam@vendor.example", PASSWORD, SAM_SECRET)
    assert answer.status == 303, answer.text
    page = await browser.get(site.console("/requests"))
    justification = "ticket 42: the export button fails for bob, " + "details " * 40 + "end"
    form = urlencode(
        {
            "csrf_token": page.csrf,
            "org": "acme",
            "member": "bob",
            "duration_s": "900",
            "scope": "read",
            "justification": justification,
        }
    ).encode()
    cut = form.index(b"justification=") + 40
    filed = await browser.post(
        site.console("/requests/new"),
        data=pieces(form[:cut], form[cut:]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert filed.status == 303, filed.text
    found = await site.app[ACCESS].store.search(requester=SAM)
    assert [r.justification for r in found] == [justification]


async def test_an_oversized_json_body_sent_in_pieces_is_refused(
    site: Site, browser: Browser
) -> None:
    limit = site.config.limits.max_json_bytes
    head = json.dumps({"email": "sam@vendor.example", "password": PASSWORD, "totp": "1"})
    # A valid object first, then whitespace past the limit: only a whole read sees the size.
    parts = [head.encode()] + [b" " * 8192] * (limit // 8192 + 1)
    async with browser.session.post(
        site.console(f"{API}/login"),
        data=pieces(*parts, pause_s=0.01),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    ) as response:
        answer = await response.json()
        assert response.status == 413, answer
    assert answer["error"] == "body_too_large"


async def test_deeply_nested_json_is_a_clear_400(site: Site, browser: Browser) -> None:
    async with browser.session.post(
        site.console(f"{API}/login"),
        data=b"[" * 50_000,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    ) as response:
        answer = await response.json()
        assert response.status == 400, answer
    assert answer["error"] == "malformed_json"


async def api_login(site: Site, browser: Browser) -> str:
    """Log `browser` in as sam through the API; returns the session's CSRF token."""
    async with browser.session.post(
        site.console(f"{API}/login"),
        json={
            "email": "sam@vendor.example",
            "password": PASSWORD,
            "totp": code_at(SAM_SECRET, site.clock.now()),
        },
        headers={"Accept": "application/json"},
    ) as response:
        answer = await response.json()
        assert response.status == 200, answer
    return str(answer["csrf_token"])


FILING = (
    b'{"org": "acme", "member": "bob", "justification": "ticket 42: %s", '
    b'"duration_s": 600, "scope": "read"}'
)


@pytest.mark.parametrize(
    "body",
    [
        # an escaped lone surrogate: JSON allows it, no UTF-8 text (nor Redis) can hold it
        FILING % b"\\ud800 half a pair",
        # one key twice: which value counts would depend on the parser
        FILING[:-1] + b', "scope": "write"}',
        # not JSON at all (RFC 8259), though Python's parser takes them
        FILING.replace(b"600", b"NaN"),
        FILING.replace(b"600", b"Infinity"),
    ],
    ids=["lone-surrogate", "duplicate-key", "nan", "infinity"],
)
async def test_json_python_would_take_but_others_would_not_is_400_and_files_nothing(
    site: Site, browser: Browser, body: bytes
) -> None:
    await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    csrf = await api_login(site, browser)
    async with browser.session.post(
        site.console(f"{API}/requests"),
        data=body,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-CSRF-Token": csrf,
        },
    ) as response:
        answer = await response.json()
        assert response.status == 400, answer
    assert answer["error"] == "malformed_json"
    assert await site.app[ACCESS].store.search(requester=SAM) == []


async def test_api_answers_with_data_are_never_stored_by_caches(
    site: Site, browser: Browser
) -> None:
    await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    csrf = await api_login(site, browser)
    headers = {"Accept": "application/json", "X-CSRF-Token": csrf}
    async with browser.session.post(
        site.console(f"{API}/requests"),
        data=FILING % b"the export fails",
        headers={**headers, "Content-Type": "application/json"},
    ) as response:
        created = await response.json()
        assert response.status == 201, created
        answers = [response.headers]
    for path in ("/requests", f"/requests/{created['id']}", "/me"):
        async with browser.session.get(site.console(API + path), headers=headers) as response:
            assert response.status == 200, await response.text()
            answers.append(response.headers)
    for answer in answers:
        assert answer.get("Cache-Control") == "no-store"
        assert answer.get("X-Content-Type-Options") == "nosniff"
