"""Acme CRM, the demo's customer app: pages, form, JSON API, SSE, websocket, /whoami."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.assertion import AssertionSigner, jwks_handler, load_signer
from gateway.config import TlsFiles
from gateway.demo.acme import (
    MAX_BODY_BYTES,
    AcmeSettings,
    InvalidContact,
    LoopbackResolver,
    create_acme_app,
    validate_contact,
)
from gateway.identity import ActingGrant, Principal, PrincipalKind
from gateway.tls import ensure_demo_tls, server_context
from policies.model import Scope

ISSUER = "https://gateway.localhost"


def _grant(now: float) -> ActingGrant:
    sam = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")
    return ActingGrant("r-7", "acme", "bob", sam, Scope.WRITE, now - 60, now + 3600)


@dataclass
class Keys:
    """The gateway side for these tests: a signer whose key set is served over real HTTPS."""

    signer: AssertionSigner
    jwks_url: str
    ca_file: str
    hits: list[int]


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[Keys]:
    tls = TlsFiles(tmp_path / "gw.crt", tmp_path / "gw.key", tmp_path / "ca.crt")
    ensure_demo_tls(tls)
    signer = load_signer(tmp_path / "keys", issuer=ISSUER, environ={})
    hits: list[int] = []
    serve_keys = jwks_handler(signer)

    async def counted(request: web.Request) -> web.Response:
        hits.append(1)
        return await serve_keys(request)

    app = web.Application()
    app.router.add_get("/.gateway/jwks.json", counted)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tls))
    await site.start()
    port = runner.addresses[0][1]
    yield Keys(
        signer, f"https://gateway.localhost:{port}/.gateway/jwks.json", str(tls.ca_file), hits
    )
    await runner.cleanup()


@pytest.fixture
async def acme(keys: Keys) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = AcmeSettings(
        public_origin="https://acme.localhost:8443",
        issuer=ISSUER,
        jwks_url=keys.jwks_url,
        ca_file=keys.ca_file,
        tick_s=0.2,
    )
    client = TestClient(TestServer(create_acme_app(settings), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


AcmeClient = TestClient[web.Request, web.Application]


def _identity(
    signer: AssertionSigner, audience: str = "https://acme.localhost:8443"
) -> dict[str, str]:
    # Acme verifies on the wall clock, as a real upstream would.
    token = signer.sign(_grant(time.time()), audience, time.time())
    return {
        "X-Gateway-User": "bob",
        "X-Gateway-Actor": "sam",
        "X-Gateway-Grant": "r-7",
        "X-Gateway-Assertion": token,
    }


async def test_whoami_verifies_the_assertion_against_the_gateways_keys(
    acme: AcmeClient, keys: Keys
) -> None:
    response = await acme.get("/whoami", headers=_identity(keys.signer))
    body = await response.json()
    assert response.status == 200
    assert (body["user"], body["actor"], body["grant"]) == ("bob", "sam", "r-7")
    assert body["assertion"]["verified"] is True, body["assertion"]
    claims = body["assertion"]["claims"]
    assert claims["sub"] == "bob"
    assert claims["act"] == {"sub": "sam"}
    assert claims["aud"] == "https://acme.localhost:8443"
    assert set(body["headers"]) == {
        "X-Gateway-User",
        "X-Gateway-Actor",
        "X-Gateway-Grant",
        "X-Gateway-Assertion",
    }
    # The key set is fetched once and then cached.
    await acme.get("/whoami", headers=_identity(keys.signer))
    assert len(keys.hits) == 1


async def test_whoami_rejects_forged_and_misdirected_assertions(
    acme: AcmeClient, keys: Keys, tmp_path: Path
) -> None:
    stranger = load_signer(tmp_path / "stranger", issuer=ISSUER, environ={})
    cases = {
        "wrong audience": _identity(keys.signer, "https://other.localhost"),
        "unknown key": _identity(stranger),
        "garbage": {"X-Gateway-Assertion": "a.b.c"},
    }
    for label, headers in cases.items():
        response = await acme.get("/whoami", headers=headers)
        body = await response.json()
        assert body["assertion"]["verified"] is False, label
        assert body["assertion"]["error"], label
    # An unknown kid refetches the key set at most once per interval, not per request.
    for _ in range(5):
        await acme.get("/whoami", headers=_identity(stranger))
    assert len(keys.hits) <= 2


async def test_whoami_without_identity_says_so(acme: AcmeClient) -> None:
    body = await (await acme.get("/whoami")).json()
    assert body == {"user": None, "actor": None, "grant": None, "headers": {}, "assertion": None}


async def test_pages_escape_what_they_show(acme: AcmeClient) -> None:
    headers = {"X-Gateway-User": "<script>alert(1)</script>"}
    response = await acme.post(
        "/contacts",
        data={"name": "<img src=x onerror=alert(1)>", "email": "x@example.com", "note": "</p>"},
        headers=headers,
        allow_redirects=False,
    )
    assert response.status == 303
    page = await (await acme.get(response.headers["Location"], headers=headers)).text()
    assert "<img" not in page
    assert "<script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    home = await (await acme.get("/")).text()
    assert "&lt;img" in home
    assert "Ann Archer" in home


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "name"),
        ({"name": "", "email": "a@b.example"}, "name"),
        ({"name": "x" * 101, "email": "a@b.example"}, "name"),
        ({"name": "Ann", "email": "not-an-email"}, "email"),
        ({"name": "Ann", "email": "a@b.example", "note": "n" * 1001}, "note"),
        ({"name": "Ann\x00", "email": "a@b.example"}, "control"),
        ({"name": "Ann", "email": "a@b.example", "admin": "1"}, "unknown"),
        ({"name": ["Ann"], "email": "a@b.example"}, "name"),
    ],
)
def test_contact_validation_names_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidContact, match=message):
        validate_contact(fields)


async def test_the_form_refuses_bad_input_and_changes_nothing(acme: AcmeClient) -> None:
    before = await (await acme.get("/api/contacts")).json()
    bad = await acme.post("/contacts", data={"name": "", "email": "a@b.example"})
    assert bad.status == 422
    assert "name: required" in await bad.text()
    repeated = await acme.post(
        "/contacts",
        data="name=a&name=b&email=a%40b.example",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert repeated.status == 422
    wrong_type = await acme.post("/contacts", data=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415
    huge = await acme.post(
        "/contacts",
        data="name=" + "a" * (MAX_BODY_BYTES + 10),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status == 413
    assert await (await acme.get("/api/contacts")).json() == before


async def test_json_api_round_trip_and_errors(acme: AcmeClient) -> None:
    created = await acme.post(
        "/api/contacts",
        json={"name": "Cleo", "email": "cleo@acme.example"},
        headers={"X-Gateway-User": "bob"},
    )
    assert created.status == 201
    contact = await created.json()
    assert contact["created_by"] == "bob"
    fetched = await (await acme.get(f"/api/contacts/{contact['id']}")).json()
    assert fetched == contact
    for raw, content_type, status in [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b'{"name": "x"}', "application/json", 422),
        (b"\xff\xfe", "application/json", 400),
        (b'{"name": "x"}', "text/plain", 415),
    ]:
        response = await acme.post(
            "/api/contacts", data=raw, headers={"Content-Type": content_type}
        )
        assert response.status == status, raw
        assert (await response.json())["error"]
    for path in ("/api/contacts/0", "/api/contacts/abc", "/api/contacts/99999", "/contacts/-1"):
        assert (await acme.get(path)).status == 404, path
    deleted = await acme.delete(f"/api/contacts/{contact['id']}")
    assert deleted.status == 204
    assert (await acme.get(f"/api/contacts/{contact['id']}")).status == 404


async def test_concurrent_creates_get_distinct_ids(acme: AcmeClient) -> None:
    async def create(index: int) -> int:
        response = await acme.post(
            "/api/contacts", json={"name": f"N{index}", "email": f"n{index}@acme.example"}
        )
        assert response.status == 201
        return int((await response.json())["id"])

    ids = await asyncio.gather(*(create(i) for i in range(30)))
    assert len(set(ids)) == 30


async def test_sse_feed_announces_new_contacts_and_ticks(acme: AcmeClient) -> None:
    response = await acme.get("/events")
    assert response.headers["Content-Type"] == "text/event-stream"
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert first.startswith(b":")
    await acme.post("/api/contacts", json={"name": "Dee", "email": "dee@acme.example"})
    events: list[bytes] = []
    while len(events) < 2:
        events.append(await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5))
    kinds = [event.split(b"\n")[0] for event in events]
    assert b"event: contact" in kinds
    contact_event = next(e for e in events if e.startswith(b"event: contact"))
    assert json.loads(contact_event.split(b"data: ", 1)[1])["name"] == "Dee"
    response.close()


async def test_websocket_echoes_and_announces(acme: AcmeClient) -> None:
    ws = await acme.ws_connect("/ws", headers={"X-Gateway-User": "bob"})
    assert await ws.receive_json(timeout=5) == {"type": "hello", "user": "bob"}
    await ws.send_str("ping")
    assert await ws.receive_json(timeout=5) == {"type": "echo", "text": "ping"}
    await acme.post("/api/contacts", json={"name": "Eve", "email": "eve@acme.example"})
    announced = await ws.receive_json(timeout=5)
    assert announced["type"] == "contact"
    assert announced["contact"]["name"] == "Eve"
    await ws.close()


async def test_loopback_resolver_serves_localhost_names_only() -> None:
    resolver = LoopbackResolver()
    for name in ("localhost", "gateway.localhost", "A.B.LOCALHOST."):
        (result,) = await resolver.resolve(name, 443)
        assert result["host"] == "127.0.0.1"
        assert result["port"] == 443
    for name in ("example.com", "localhost.example.com", "evil-localhost"):
        with pytest.raises(OSError, match="only localhost"):
            await resolver.resolve(name, 443)


async def test_whoami_reports_an_unreachable_key_set(keys: Keys) -> None:
    settings = AcmeSettings(
        public_origin="https://acme.localhost:8443",
        issuer=ISSUER,
        jwks_url="https://gateway.localhost:1/.gateway/jwks.json",
        ca_file=keys.ca_file,
    )
    async with TestClient(TestServer(create_acme_app(settings), host="127.0.0.1")) as client:
        body = await (await client.get("/whoami", headers=_identity(keys.signer))).json()
    assert body["assertion"]["verified"] is False
    assert "Client" in body["assertion"]["error"] or "Connect" in body["assertion"]["error"]
