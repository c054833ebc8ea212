"""The access workflow's JSON API over real HTTPS: real logins (password + TOTP), CSRF,
authorisation, every bad input answered clearly with nothing changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway import keys
from gateway.accounts.totp import code_at
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    PASSWORD,
    SAM_SECRET,
    Browser,
    Site,
    site,
    site_factory,
)

__all__ = ["site", "site_factory"]  # fixtures of the HTTPS harness

API = "/.gateway/api/v1"
CAROL_SECRET = "JBSWY3DPEHPK3PXPCAROLTESTSECRET2"
BOB_SECRET = "JBSWY3DPEHPK3PXPBOBTESTSECRET234"
GINA_SECRET = "JBSWY3DPEHPK3PXPGINATESTSECRET23"
JUSTIFICATION = "ticket 301: the dashboard shows no data"


@dataclass
class Caller:
    browser: Browser
    csrf: str
    site: Site

    async def call(
        self, method: str, path: str, *, csrf: str | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf if csrf is None else csrf)
        async with self.browser.session.request(
            method, self.site.console(API + path), headers=headers, allow_redirects=False, **kwargs
        ) as response:
            return response.status, await response.json(content_type=None)


@dataclass
class People:
    sam: Caller
    alice: Caller
    carol: Caller
    bob: Caller
    gina: Caller


async def login(site: Site, email: str, secret: str) -> Caller:
    browser = site.browser()
    async with browser.session.post(
        site.console(f"{API}/login"),
        json={"email": email, "password": PASSWORD, "totp": code_at(secret, site.clock.now())},
        headers={"Accept": "application/json"},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    return Caller(browser, body["csrf_token"], site)


@pytest.fixture
async def people(site: Site) -> AsyncIterator[People]:
    store = site.accounts.store
    await store.put_org("globex", "Globex")
    for org, member_id, role, secret in (
        ("acme", "carol", "admin", CAROL_SECRET),
        ("acme", "bob", "member", BOB_SECRET),
        ("globex", "gina", "admin", GINA_SECRET),
    ):
        account = await store.put_member(org, member_id, f"{member_id}@{org}.example",
                                         member_id.title(), role)  # fmt: skip
        await store.set_password(account.key, PASSWORD)
        await store.set_totp_secret(account.key, secret)
    await store.put_member("acme", "dave", "dave@acme.example", "Dave", "member",
                           impersonable=False)  # fmt: skip
    crowd = People(
        sam=await login(site, "sam@vendor.example", SAM_SECRET),
        alice=await login(site, "alice@acme.example", ALICE_SECRET),
        carol=await login(site, "carol@acme.example", CAROL_SECRET),
        bob=await login(site, "bob@acme.example", BOB_SECRET),
        gina=await login(site, "gina@globex.example", GINA_SECRET),
    )
    yield crowd
    for caller in (crowd.sam, crowd.alice, crowd.carol, crowd.bob, crowd.gina):
        await caller.browser.close()


async def file(people: People, **overrides: Any) -> tuple[int, dict[str, Any]]:
    body = {
        "org": "acme",
        "member": "bob",
        "justification": JUSTIFICATION,
        "duration_s": 3600,
        "scope": "read",
        **overrides,
    }
    return await people.sam.call("POST", "/requests", json=body)


async def test_the_whole_loop(people: People, site: Site) -> None:
    status, created = await file(people)
    assert status == 201, created
    rid = created["id"]
    assert (created["state"], created["member"], created["scope"]) == ("pending", "bob", "read")
    # The gateway's notices loop queues the approvers' mail by itself.
    async with asyncio.timeout(15):
        while await site.redis.zcard(keys.mail_queue()) < 2:  # noqa: ASYNC110 (another task)
            await asyncio.sleep(0.02)
    status, listed = await people.alice.call("GET", "/requests?state=pending")
    assert status == 200
    assert [r["id"] for r in listed["requests"]] == [rid]
    status, approved = await people.alice.call(
        "POST", f"/requests/{rid}/approve", json={"comment": "ok", "duration_s": 1800}
    )
    assert status == 200, approved
    assert (approved["state"], approved["duration_s"], approved["live"]) == ("approved", 1800, True)
    status, shown = await people.sam.call("GET", f"/requests/{rid}")
    assert status == 200
    assert [h["action"] for h in shown["history"]] == ["filed", "approval", "approved"]
    status, revoked = await people.sam.call("POST", f"/requests/{rid}/revoke", json={})
    assert (status, revoked["state"]) == (200, "revoked")
    status, again = await people.alice.call("POST", f"/requests/{rid}/revoke", json={})
    assert (status, again["error"]) == (409, "wrong_state")
    assert again["request_id"]


async def test_visibility_and_who_decides(people: People, site: Site) -> None:
    _, created = await file(people)
    rid = created["id"]
    # Another org's admin: the request does not exist for them.
    for method, path in (("GET", f"/requests/{rid}"), ("POST", f"/requests/{rid}/approve")):
        status, body = await people.gina.call(method, path, json={})
        assert (status, body["error"]) == (404, "not_found")
    status, body = await people.gina.call("GET", "/requests?org=acme")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await people.bob.call("POST", f"/requests/{rid}/approve", json={})
    assert (status, body["error"]) == (403, "not_approver")
    status, body = await people.sam.call("POST", f"/requests/{rid}/approve", json={})
    assert (status, body["error"]) == (403, "self_approval")
    status, body = await people.bob.call("GET", f"/requests/{rid}")
    assert status == 200  # members of the org see its requests
    assert (await site.redis.hget(keys.access_request(rid), "state")) == b"pending"


async def test_a_linked_account_of_the_requester_does_not_decide(
    people: People, site: Site
) -> None:
    # Sam (staff) and Carol (an acme admin) are one person, as the directory says.
    store = site.accounts.store
    sam = (await store.require("staff:sam")).principal
    await store.put_staff(sam.id, sam.email, sam.name, create=False, person="sam.person")
    await store.put_member("acme", "carol", "carol@acme.example", "Carol", "admin",
                           create=False, person="sam.person")  # fmt: skip
    _, created = await file(people)
    rid = created["id"]
    for verb, body in (("approve", {}), ("deny", {"comment": "mine"})):
        status, answer = await people.carol.call("POST", f"/requests/{rid}/{verb}", json=body)
        assert (status, answer["error"]) == (403, "self_approval")
    assert (await site.redis.hget(keys.access_request(rid), "state")) == b"pending"
    status, answer = await people.alice.call("POST", f"/requests/{rid}/approve", json={})
    assert (status, answer["state"]) == (200, "approved")


async def test_csrf_is_required_on_every_state_change(people: People, site: Site) -> None:
    _, created = await file(people)
    rid = created["id"]
    for token in ("", "stale-token-from-another-session"):
        status, body = await people.alice.call(
            "POST", f"/requests/{rid}/approve", json={}, csrf=token
        )
        assert (status, body["error"]) == (403, "csrf_failed")
    status, body = await people.sam.call("POST", "/requests", json={}, csrf="")
    assert (status, body["error"]) == (403, "csrf_failed")
    assert (await site.redis.hget(keys.access_request(rid), "state")) == b"pending"


@pytest.mark.parametrize(
    ("overrides", "status", "code"),
    [
        ({"justification": "short"}, 422, "justification_too_short"),
        ({"justification": None}, 422, "invalid_justification"),
        ({"duration_s": 0}, 422, "invalid_duration"),
        ({"duration_s": -1}, 422, "invalid_duration"),
        ({"duration_s": "an hour"}, 422, "invalid_duration"),
        ({"duration_s": 14401}, 422, "duration_too_long"),
        ({"scope": "root"}, 422, "invalid_scope"),
        ({"org": "nope"}, 422, "unknown_org"),
        ({"member": "nobody"}, 422, "unknown_member"),
        ({"member": "dave"}, 422, "member_not_impersonable"),
        ({"member": "alice"}, 422, "admin_not_impersonable"),
        ({"extra": 1}, 422, "invalid_field"),
    ],
)
async def test_bad_requests_change_nothing(
    people: People, site: Site, overrides: dict[str, Any], status: int, code: str
) -> None:
    before = await site.redis.dbsize()
    got, body = await file(people, **overrides)
    assert (got, body["error"]) == (status, code), body
    assert body["reason"]
    assert await site.redis.dbsize() == before


async def test_malformed_oversized_and_non_json_bodies(people: People, site: Site) -> None:
    headers = {"Content-Type": "application/json"}
    status, body = await people.sam.call("POST", "/requests", data=b"{not json", headers=headers)
    assert (status, body["error"]) == (400, "malformed_json")
    status, body = await people.sam.call("POST", "/requests", data=b"[1, 2]", headers=headers)
    assert status == 422
    huge = b'{"justification": "' + b"x" * 70000 + b'"}'
    status, body = await people.sam.call("POST", "/requests", data=huge, headers=headers)
    assert status == 413
    status, body = await people.sam.call(
        "POST", "/requests", data=b"org=acme", headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    assert await site.redis.zcard(keys.org_requests("acme")) == 0


async def test_second_live_grant_and_wrong_states(people: People) -> None:
    _, first = await file(people)
    await people.alice.call("POST", f"/requests/{first['id']}/approve", json={})
    status, body = await file(people)
    assert (status, body["error"]) == (409, "live_grant_exists")
    status, body = await people.alice.call(
        "POST", f"/requests/{first['id']}/deny", json={"comment": "late"}
    )
    assert (status, body["error"]) == (409, "wrong_state")
    status, body = await people.sam.call("POST", f"/requests/{first['id']}/cancel", json={})
    assert (status, body["error"]) == (409, "wrong_state")


async def test_deny_and_cancel(people: People) -> None:
    _, one = await file(people)
    status, denied = await people.carol.call(
        "POST", f"/requests/{one['id']}/deny", json={"comment": "no"}
    )
    assert (status, denied["state"]) == (200, "denied")
    _, two = await file(people)
    status, cancelled = await people.sam.call("POST", f"/requests/{two['id']}/cancel")
    assert (status, cancelled["state"]) == (200, "cancelled")
    status, mine = await people.sam.call("GET", "/requests")
    assert sorted(r["state"] for r in mine["requests"]) == ["cancelled", "denied"]


async def test_approvers_and_settings(people: People, site: Site) -> None:
    status, body = await people.bob.call("GET", "/orgs/acme/approvers")
    assert status == 200
    assert [a["id"] for a in body["approvers"]] == ["alice", "carol"]
    status, body = await people.bob.call("PUT", "/orgs/acme/approvers", json={"approvers": []})
    assert (status, body["error"]) == (403, "not_admin")
    status, body = await people.gina.call("GET", "/orgs/acme/approvers")
    assert status == 404
    status, body = await people.alice.call(
        "PUT", "/orgs/acme/approvers", json={"approvers": ["carol", "ghost"]}
    )
    assert (status, body["error"]) == (422, "invalid_approvers")
    status, body = await people.alice.call(
        "PUT", "/orgs/acme/approvers", json={"approvers": ["carol"]}
    )
    assert (status, [a["id"] for a in body["approvers"]]) == (200, ["carol"])
    _, created = await file(people)
    status, body = await people.alice.call("POST", f"/requests/{created['id']}/approve", json={})
    assert (status, body["error"]) == (403, "not_approver")

    status, body = await people.alice.call(
        "PUT", "/orgs/acme/settings", json={"approvals_required": 0, "max_duration_s": "long"}
    )
    assert (status, body["error"]) == (422, "invalid_settings")
    status, body = await people.alice.call(
        "PUT", "/orgs/acme/settings", json={"max_duration_s": 600, "ticket_pattern": "SUP-[0-9]+"}
    )
    assert status == 200
    assert body["settings"]["max_duration_s"] == 600
    status, body = await file(people, duration_s=601, justification="SUP-9 " + JUSTIFICATION)
    assert (status, body["error"]) == (422, "duration_too_long")
    status, body = await file(people, duration_s=600)
    assert (status, body["error"]) == (422, "ticket_required")
    status, body = await people.bob.call("GET", "/orgs/acme/settings")
    assert (status, body["settings"]["ticket_pattern"]) == (200, "SUP-[0-9]+")
    status, body = await people.gina.call("PUT", "/orgs/acme/settings", json={})
    assert status == 404


async def test_impersonation_and_revoke_all(people: People) -> None:
    status, started = await people.alice.call(
        "POST", "/impersonate", json={"member": "bob", "duration_s": 600}
    )
    assert status == 201, started
    assert (started["kind"], started["state"], started["live"]) == (
        "impersonation",
        "approved",
        True,
    )
    status, body = await people.alice.call(
        "POST", "/impersonate", json={"member": "carol", "duration_s": 600}
    )
    assert (status, body["error"]) == (422, "admin_not_impersonable")
    status, body = await people.bob.call(
        "POST", "/impersonate", json={"member": "dave", "duration_s": 600}
    )
    assert status == 403
    status, body = await people.sam.call(
        "POST", "/impersonate", json={"member": "bob", "duration_s": 600}
    )
    assert status == 404
    _, created = await file(people)
    await people.carol.call("POST", f"/requests/{created['id']}/approve", json={})
    status, body = await people.bob.call("POST", "/orgs/acme/revoke-all", json={})
    assert (status, body["error"]) == (403, "not_admin")
    status, body = await people.gina.call("POST", "/orgs/acme/revoke-all", json={})
    assert status == 404
    status, body = await people.carol.call(
        "POST", "/orgs/acme/revoke-all", json={"comment": "incident 7"}
    )
    assert status == 200
    assert sorted(body["revoked"]) == sorted([started["id"], created["id"]])


async def test_two_approvers_clicking_at_once_over_https(people: People) -> None:
    for _ in range(5):
        _, created = await file(people)
        rid = created["id"]
        results = await asyncio.gather(
            people.alice.call("POST", f"/requests/{rid}/approve", json={}),
            people.carol.call("POST", f"/requests/{rid}/approve", json={}),
        )
        assert sorted(status for status, _ in results) == [200, 409]
        status, shown = await people.sam.call("GET", f"/requests/{rid}")
        assert status == 200
        assert [h["action"] for h in shown["history"]].count("approved") == 1
        await people.sam.call("POST", f"/requests/{rid}/revoke", json={})
