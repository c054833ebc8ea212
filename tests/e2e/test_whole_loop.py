"""The whole product in one walk, as its users meet it.

Sam (vendor support) logs in through the API with password and TOTP and asks to act as
bob in acme with write scope; alice (acme's admin) gets the email with the console link,
logs in and approves, narrowing the scope to read; sam is handed off to Acme CRM, whose
/whoami shows the identity it received and an assertion that verifies against the
console's jwks.json; a POST through the read grant is refused before Acme CRM; alice
revokes and sam's very next request is denied; the decision and summary emails go out;
then the auditor's commands (collect, verify, replay, export) run on the trail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from gateway.assertion import verify
from gateway.cli.demo import APP_HOST
from gateway.cookies import APP_SESSION, HANDOFF_BINDING
from tests.e2e.conftest import ALICE, SAM, Person, Stack, StackFactory

MAIN = "import sys; from gateway.cli import main; sys.exit(main())"


async def gateway_cli(*args: str) -> tuple[int, str, str]:
    """`gateway …` as an auditor runs it: a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MAIN,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_request_approve_browse_revoke_then_audit(
    stack_factory: StackFactory,
    people: Callable[[Stack], Person],
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    stack = await stack_factory(redis_url)
    sam, alice = people(stack), people(stack)

    # 1. Sam logs in (password + TOTP) and files a write request for bob.
    answer = await sam.log_in(SAM)
    assert answer.status == 200, answer.text
    assert answer.json()["principal"]["key"] == "staff:sam"
    filed = await sam.api(
        "POST",
        "/requests",
        {
            "org": "acme",
            "member": "bob",
            "justification": "ticket 42: contact import fails",
            "duration_s": 1800,
            "scope": "write",
        },
    )
    assert filed.status == 201, filed.text
    rid = filed.json()["id"]
    assert filed.json()["state"] == "pending"

    # 2. The approver's email links to the request in the console (and approves nothing).
    await stack.mail_to("alice@acme.example", 1)
    notice = next(m for m in stack.mail if "alice@acme.example" in m.recipients)
    assert stack.console(f"/requests/{rid}") in notice.text
    before = await sam.hand_off("/whoami")
    assert (before.status, before.json()["error"]) == (403, "no_grant")
    # The hand-off left host-only gateway cookies on the routed host, and nothing else:
    # the app session and the browser's hand-off nonce (kept for its other tabs).
    assert sam.cookie_names(APP_HOST) == {APP_SESSION, HANDOFF_BINDING}
    assert stack.seen == []

    # 3. Alice logs in and approves, narrowing the scope to read.
    answer = await alice.log_in(ALICE)
    assert answer.status == 200, answer.text
    approved = await alice.api("POST", f"/requests/{rid}/approve", {"scope": "read"})
    assert approved.status == 200, approved.text
    assert approved.json()["state"] == "approved"

    # 4. Sam, already handed off to Acme CRM, sees what the app received.
    page = await sam.call("GET", stack.routed("/whoami"))
    assert page.status == 200, page.text
    whoami = page.json()
    assert (whoami["user"], whoami["actor"], whoami["grant"]) == ("bob", "sam", rid)
    assert whoami["assertion"]["verified"] is True, whoami["assertion"]
    token = whoami["headers"]["X-Gateway-Assertion"]
    jwks = (await sam.call("GET", stack.console("/.gateway/jwks.json"))).json()
    origin = stack.routed("").rstrip("/")
    claims = verify(token, jwks, audience=origin, issuer=stack.console("").rstrip("/"))
    assert (claims["aud"], claims["sub"], claims["act"]) == (origin, "bob", {"sub": "sam"})
    assert (claims["grant"], claims["org"], claims["scope"]) == (rid, "acme", "read")
    assert stack.seen[-1].path == "/whoami"
    assert stack.seen[-1].headers["X-Gateway-User"] == "bob"
    assert "__Host-gw_app" not in stack.seen[-1].headers.get("Cookie", "")

    # 5. A write through the read grant is refused; Acme CRM never sees it.
    reached = len(stack.seen)
    post = await sam.call(
        "POST", stack.routed("/api/contacts"), json={"name": "Eve", "email": "eve@acme.example"}
    )
    assert post.status == 403, post.text
    assert post.json()["request_id"]
    assert len(stack.seen) == reached
    listed = await sam.call("GET", stack.routed("/api/contacts"))
    assert listed.status == 200
    assert "Eve" not in listed.text

    # 6. Alice revokes; sam's very next request is denied.
    revoked = await alice.api("POST", f"/requests/{rid}/revoke", {"comment": "done, thanks"})
    assert revoked.status == 200, revoked.text
    reached = len(stack.seen)
    after = await sam.call("GET", stack.routed("/whoami"))
    assert after.status == 403, after.text
    assert after.json()["error"] == "grant_revoked"
    assert len(stack.seen) == reached

    # 7. The requester hears of each decision, the approvers get the summary.
    to_sam = await stack.mail_to("sam@vendor.example", 2)
    to_alice = await stack.mail_to("alice@acme.example", 2)
    assert any("approved" in s.lower() for s in to_sam), to_sam
    assert any("revoked" in s.lower() for s in to_sam), to_sam
    assert "Access ended (revoked): sam in acme" in to_alice, to_alice
    summary = next(m for m in stack.mail if m.subject.startswith("Access ended (revoked)"))
    # (Its request count is flushed from the gateway once a second, so it is not exact
    # for requests made in the last second before the revocation.)
    assert re.search(r"Requests made through the gateway: \d+", summary.text), summary.text
    assert "alice" in summary.text

    # 8. The auditor: collect the stream into segments, verify, replay, export.
    await stack.stop()
    segments = tmp_path / "segments"
    code, _, err = await gateway_cli(
        "audit", "collect", "--once", "--redis-url", redis_url, "--segment-dir", str(segments)
    )
    assert code == 0, err
    keyring = stack.data_dir / "audit-keys" / "keyring.json"
    code, out, err = await gateway_cli("audit", "verify", str(segments), "--keyring", str(keyring))
    assert code == 0, out + err
    code, out, err = await gateway_cli("audit", "replay", str(segments), "--grant", rid)
    assert code == 0, err
    assert "/whoami" in out
    assert "/api/contacts" in out
    har_file = tmp_path / "trail.har"
    code, _, err = await gateway_cli(
        "audit", "export", str(segments), "--format", "har", "-o", str(har_file)
    )
    assert code == 0, err
    har = json.loads(har_file.read_text(encoding="utf-8"))
    urls = [entry["request"]["url"] for entry in har["log"]["entries"]]
    assert any(url.endswith("/whoami") for url in urls), urls
