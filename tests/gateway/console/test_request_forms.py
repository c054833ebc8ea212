"""The console's decision forms refuse hostile fields with a clear error and change nothing."""

from __future__ import annotations

import re

import pytest

from gateway import keys
from tests.gateway.access.test_console_pages import filed
from tests.gateway.sessions.harness import ALICE_SECRET, PASSWORD, Site

GINA_SECRET = "JBSWY3DPEHPK3PXPGINATESTSECRET23"


@pytest.mark.parametrize("duration", ["²", "٣٠٠", "9" * 5000, "-5", "1e3", " 600x"])
async def test_hostile_duration_is_a_clear_error_and_changes_nothing(
    site: Site, duration: str
) -> None:
    rid = await filed(site)
    async with site.browser() as browser:
        await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
        page = await browser.get(site.console(f"/requests/{rid}"))
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        refused = await browser.post(
            site.console(f"/requests/{rid}/approve"),
            data={"csrf_token": token.group(1), "duration_s": duration, "comment": "ok"},
        )
        assert refused.status == 422, refused.text
        assert "duration" in refused.text
        assert await site.redis.hget(keys.access_request(rid), "state") == b"pending"


async def test_another_orgs_request_is_404_to_see_and_to_decide(site: Site) -> None:
    rid = await filed(site)
    store = site.accounts.store
    await store.put_org("globex", "Globex")
    gina = await store.put_member("globex", "gina", "gina@globex.example", "Gina", "admin")
    await store.set_password(gina.key, PASSWORD)
    await store.set_totp_secret(gina.key, GINA_SECRET)
    async with site.browser() as browser:
        answer = await browser.login("gina@globex.example", PASSWORD, GINA_SECRET)
        assert answer.status == 303, answer.text
        shown = await browser.get(site.console(f"/requests/{rid}"))
        assert shown.status == 404, shown.text
        listing = await browser.get(site.console("/requests"))
        assert rid not in listing.text
        own = await browser.get(site.console("/"))
        for action in ("approve", "deny", "revoke", "cancel"):
            tried = await browser.post(
                site.console(f"/requests/{rid}/{action}"),
                data={"csrf_token": own.csrf, "comment": "not mine"},
            )
            assert tried.status == 404, (action, tried.text)
    assert await site.redis.hget(keys.access_request(rid), "state") == b"pending"
    assert await site.redis.scard(keys.request_approvals(rid)) == 0


async def test_the_requesters_linked_account_is_not_offered_the_decision(site: Site) -> None:
    rid = await filed(site)
    async with site.browser() as browser:
        await browser.login("alice@acme.example", PASSWORD, ALICE_SECRET)
        unlinked = await browser.get(site.console(f"/requests/{rid}"))
        assert 'id="approve"' in unlinked.text
        assert 'id="deny"' in unlinked.text
        # sam (the requester) and alice are one person: the console offers her no decision,
        # and the decision scripts refuse it.
        await site.redis.hset(keys.staff("sam"), "person", "sam-smith")
        await site.redis.hset(keys.member("acme", "alice"), "person", "sam-smith")
        linked = await browser.get(site.console(f"/requests/{rid}"))
        assert linked.status == 200, linked.text
        assert 'id="approve"' not in linked.text
        assert 'id="deny"' not in linked.text
        refused = await browser.post(
            site.console(f"/requests/{rid}/approve"),
            data={"csrf_token": linked.csrf, "comment": "mine"},
        )
        assert refused.status == 403, refused.text
    assert await site.redis.hget(keys.access_request(rid), "state") == b"pending"
