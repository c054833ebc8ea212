"""The console's request pages over real HTTPS: the link from a notice shows the request,
only a CSRF-carrying POST decides it."""

from __future__ import annotations

import re

from gateway import keys
from gateway.access.service import ACCESS
from tests.gateway.access.conftest import SAM
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    PASSWORD,
    Site,
    site,
    site_factory,
)

__all__ = ["site", "site_factory"]  # fixtures of the HTTPS harness


async def filed(site: Site) -> str:
    await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    request = await site.app[ACCESS].store.file(
        SAM,
        org="acme",
        member="bob",
        justification="ticket 42: <script>alert(1)</script>",
        duration_s=900,
        scope="write",
    )
    return request.id


async def test_the_link_shows_and_only_a_post_decides(site: Site) -> None:
    rid = await filed(site)
    browser = site.browser()
    try:
        page = await browser.get(site.console(f"/requests/{rid}"))
        assert page.status == 303
        assert page.location.startswith("/login")
        login = await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
        assert login.status == 303
        page = await browser.get(site.console(f"/requests/{rid}"))
        assert page.status == 200
        assert "&lt;script&gt;" in page.text  # escaped, never markup
        assert "<script>" not in page.text
        assert (await site.redis.hget(keys.access_request(rid), "state")) == b"pending"
        refused = await browser.post(
            site.console(f"/requests/{rid}/approve"), data={"csrf_token": "forged"}
        )
        assert refused.status == 403
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        done = await browser.post(
            site.console(f"/requests/{rid}/approve"),
            data={"csrf_token": token.group(1), "duration_s": "600", "scope": "read",
                  "comment": "ok"},
        )  # fmt: skip
        assert (done.status, done.location) == (303, f"/requests/{rid}")
        page = await browser.get(site.console(f"/requests/{rid}"))
        assert "approved" in page.text
        assert 'id="revoke"' in page.text
        again = await browser.post(
            site.console(f"/requests/{rid}/deny"), data={"csrf_token": token.group(1)}
        )
        assert again.status == 409
        listing = await browser.get(site.console("/requests"))
        assert rid in listing.text
        missing = await browser.get(site.console("/requests/not-a-request"))
        assert missing.status == 404
    finally:
        await browser.close()
    state = await site.redis.hget(keys.access_request(rid), "scope")
    assert state == b"read"
