"""The console's decision forms refuse hostile fields with a clear error and change nothing."""

from __future__ import annotations

import re

import pytest

from gateway import keys
from tests.gateway.access.test_console_pages import filed
from tests.gateway.sessions.harness import ALICE_SECRET, PASSWORD, Site


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
