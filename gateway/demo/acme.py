"""Acme CRM: the small customer application the demo runs behind the gateway.

It has what a real customer application has and what the gateway must carry faithfully:
HTML pages, a form that posts, a JSON API, a server-sent-events feed, a websocket, and
`GET /whoami`, which answers with the identity the application received: the
`X-Gateway-*` headers and the claims of `X-Gateway-Assertion` once verified against the
gateway's published keys (`/.gateway/jwks.json` on the console origin).

    GET  /                      contacts (HTML)         GET  /contacts/{id}   one contact
    GET  /contacts/new          the form                POST /contacts        form post -> 303
    GET  /api/contacts          JSON list               POST /api/contacts    JSON create -> 201
    GET  /api/contacts/{id}     JSON one                DELETE /api/contacts/{id}
    GET  /events                SSE: `contact` events as they happen, `tick` every few seconds
    GET  /ws                    websocket: echoes text, announces new contacts
    GET  /whoami                JSON: headers received + verified assertion claims
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.assertion import verify

MAX_BODY_BYTES = 65536
_ID = re.compile(r"^[1-9][0-9]{0,8}$")
_EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,185}\.[A-Za-z]{2,24}$")
JWKS_TTL_S = 300.0
JWKS_REFETCH_MIN_S = 10.0  # an unknown kid refetches the key set, but not more often than this


@dataclass(frozen=True)
class AcmeSettings:
    public_origin: str  # the origin users reach the app at, the assertion's audience
    issuer: str  # the gateway's console URL, the assertion's issuer
    jwks_url: str  # where the gateway publishes its keys
    ca_file: str | None = None  # the CA that signed the gateway's certificate (the demo CA)
    tick_s: float = 5.0


@dataclass
class Contact:
    id: int
    name: str
    email: str
    note: str
    created_by: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "note": self.note,
            "created_by": self.created_by,
        }


@dataclass
class ContactBook:
    contacts: dict[int, Contact] = field(default_factory=dict)
    next_id: int = 1
    listeners: set[asyncio.Queue[Contact]] = field(default_factory=set)

    def add(self, name: str, email: str, note: str, created_by: str) -> Contact:
        contact = Contact(self.next_id, name, email, note, created_by)
        self.contacts[contact.id] = contact
        self.next_id += 1
        for queue in list(self.listeners):
            if queue.qsize() < 100:  # a slow listener misses news rather than growing memory
                queue.put_nowait(contact)
        return contact


class InvalidContact(ValueError):
    """A contact form or JSON body that cannot be accepted; the message says why."""


def validate_contact(fields: Mapping[str, object]) -> tuple[str, str, str]:
    """(name, email, note) from untrusted input, or InvalidContact naming the field."""
    unknown = set(fields) - {"name", "email", "note"}
    if unknown:
        raise InvalidContact(f"unknown field(s): {', '.join(sorted(unknown))}")
    name, email, note = fields.get("name"), fields.get("email"), fields.get("note", "")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
        raise InvalidContact("name: required, 1 to 100 characters")
    if not isinstance(email, str) or len(email) > 254 or not _EMAIL.match(email):
        raise InvalidContact("email: required, an address like ann@example.com")
    if not isinstance(note, str) or len(note) > 1000:
        raise InvalidContact("note: at most 1000 characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in name + note):
        raise InvalidContact("name/note: control characters are not allowed")
    return name.strip(), email, note


class LoopbackResolver(AbstractResolver):
    """`localhost` and `*.localhost` resolve to loopback (RFC 6761), whatever /etc/hosts says.

    Browsers already do this; the demo app needs it to reach `gateway.localhost` for the
    key set. Any other name is refused: the app only ever talks to the local gateway.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = host.rstrip(".").lower()
        if name == "localhost" or name.endswith(".localhost") or name == "127.0.0.1":
            return [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            ]
        raise OSError(f"the demo app resolves only localhost names, not {host!r}")

    async def close(self) -> None:
        return None


class AssertionVerifier:
    """Verifies `X-Gateway-Assertion` against the gateway's JWKS, fetched over HTTPS."""

    def __init__(self, settings: AcmeSettings) -> None:
        self.settings = settings
        self._jwks: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _fetch(self) -> dict[str, Any]:
        if self._session is None:
            context = ssl.create_default_context(cafile=self.settings.ca_file)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, resolver=LoopbackResolver()),
                timeout=aiohttp.ClientTimeout(total=5),
            )
        async with self._session.get(self.settings.jwks_url) as response:
            response.raise_for_status()
            body = await response.json(content_type=None)
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise jwt.InvalidKeyError(f"{self.settings.jwks_url}: not a JWK Set")
        return body

    async def jwks(self, kid: str | None) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            known = self._jwks is not None and any(
                k.get("kid") == kid for k in self._jwks["keys"] if isinstance(k, dict)
            )
            stale = now - self._fetched_at > JWKS_TTL_S
            may_refetch = now - self._fetched_at > JWKS_REFETCH_MIN_S
            if self._jwks is None or stale or (not known and may_refetch):
                self._jwks = await self._fetch()
                self._fetched_at = now
            return self._jwks

    async def verify(self, token: str) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = await self.jwks(kid if isinstance(kid, str) else None)
        return verify(
            token, keys, audience=self.settings.public_origin, issuer=self.settings.issuer
        )


BOOK = web.AppKey("acme_book", ContactBook)
SETTINGS = web.AppKey("acme_settings", AcmeSettings)
VERIFIER = web.AppKey("acme_verifier", AssertionVerifier)


def _acting_as(request: web.Request) -> str:
    return request.headers.get("X-Gateway-User", "anonymous")


def _page(request: web.Request, title: str, body: str, status: int = 200) -> web.Response:
    user = html.escape(_acting_as(request))
    actor = request.headers.get("X-Gateway-Actor")
    banner = f"Signed in as <b>{user}</b>"
    if actor:
        banner += f" (support engineer <b>{html.escape(actor)}</b> acting)"
    return web.Response(
        status=status,
        content_type="text/html",
        text=(
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{html.escape(title)} · Acme CRM</title></head><body>"
            f'<header><a href="/">Acme CRM</a> · {banner} · <a href="/whoami">whoami</a>'
            f' · <a href="/contacts/new">new contact</a></header>'
            f"<main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
        ),
    )


async def home(request: web.Request) -> web.Response:
    rows = "".join(
        f'<li><a href="/contacts/{c.id}">{html.escape(c.name)}</a> '
        f"&lt;{html.escape(c.email)}&gt;</li>"
        for c in request.app[BOOK].contacts.values()
    )
    return _page(request, "Contacts", f"<ul id=contacts>{rows}</ul>")


def _contact_or_404(request: web.Request) -> Contact:
    raw = request.match_info["id"]
    contact = request.app[BOOK].contacts.get(int(raw)) if _ID.match(raw) else None
    if contact is None:
        raise web.HTTPNotFound(text=f"no contact {raw[:20]!r}\n")
    return contact


async def contact_page(request: web.Request) -> web.Response:
    c = _contact_or_404(request)
    return _page(
        request,
        c.name,
        f"<p>Email: {html.escape(c.email)}</p><p>Note: {html.escape(c.note)}</p>"
        f"<p>Created by {html.escape(c.created_by)}</p>",
    )


def _form(error: str = "", values: Mapping[str, str] | None = None) -> str:
    v = {k: html.escape(values.get(k, "")) for k in ("name", "email", "note")} if values else {}
    message = f"<p class=error role=alert>{html.escape(error)}</p>" if error else ""
    return (
        f'{message}<form method=post action="/contacts">'
        f'<label>Name <input name=name value="{v.get("name", "")}" maxlength=100></label>'
        f'<label>Email <input name=email value="{v.get("email", "")}" maxlength=254></label>'
        f"<label>Note <textarea name=note maxlength=1000>{v.get('note', '')}</textarea></label>"
        "<button>Save</button></form>"
    )


async def new_contact_form(request: web.Request) -> web.Response:
    return _page(request, "New contact", _form())


async def post_contact_form(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise web.HTTPUnsupportedMediaType(
            text="send the form as application/x-www-form-urlencoded\n"
        )
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        if len(fields) != len(form) or len(form) != len(set(form.keys())):
            raise InvalidContact("each field once, as text")
        name, email, note = validate_contact(fields)
    except InvalidContact as exc:
        return _page(request, "New contact", _form(str(exc), fields), status=422)
    contact = request.app[BOOK].add(name, email, note, _acting_as(request))
    raise web.HTTPSeeOther(f"/contacts/{contact.id}")


async def api_list(request: web.Request) -> web.Response:
    return web.json_response([c.as_json() for c in request.app[BOOK].contacts.values()])


async def api_get(request: web.Request) -> web.Response:
    return web.json_response(_contact_or_404(request).as_json())


def _json_error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


async def api_create(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return _json_error(415, "unsupported_media_type", "send application/json")
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _json_error(400, "malformed_json", "the body is not valid JSON")
    if not isinstance(body, dict):
        return _json_error(422, "invalid_contact", "the body must be a JSON object")
    try:
        name, email, note = validate_contact(body)
    except InvalidContact as exc:
        return _json_error(422, "invalid_contact", str(exc))
    contact = request.app[BOOK].add(name, email, note, _acting_as(request))
    return web.json_response(contact.as_json(), status=201)


async def api_delete(request: web.Request) -> web.Response:
    contact = _contact_or_404(request)
    del request.app[BOOK].contacts[contact.id]
    return web.Response(status=204)


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    queue: asyncio.Queue[Contact] = asyncio.Queue()
    book = request.app[BOOK]
    book.listeners.add(queue)
    tick = 0
    try:
        await response.write(b": acme crm events\n\n")
        while True:
            try:
                contact = await asyncio.wait_for(queue.get(), request.app[SETTINGS].tick_s)
                data = json.dumps(contact.as_json())
                await response.write(f"event: contact\ndata: {data}\n\n".encode())
            except TimeoutError:
                tick += 1
                await response.write(f"event: tick\ndata: {tick}\n\n".encode())
    except ConnectionResetError:
        pass  # the reader went away: the feed ends quietly
    finally:
        book.listeners.discard(queue)
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_BODY_BYTES)
    await ws.prepare(request)
    queue: asyncio.Queue[Contact] = asyncio.Queue()
    book = request.app[BOOK]
    book.listeners.add(queue)

    async def announce() -> None:
        while True:
            contact = await queue.get()
            await ws.send_json({"type": "contact", "contact": contact.as_json()})

    announcer = asyncio.create_task(announce())
    try:
        await ws.send_json({"type": "hello", "user": _acting_as(request)})
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_json({"type": "echo", "text": message.data})
    finally:
        announcer.cancel()
        book.listeners.discard(queue)
    return ws


async def whoami(request: web.Request) -> web.Response:
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower().startswith("x-gateway-")
    }
    answer: dict[str, Any] = {
        "user": request.headers.get("X-Gateway-User"),
        "actor": request.headers.get("X-Gateway-Actor"),
        "grant": request.headers.get("X-Gateway-Grant"),
        "headers": headers,
        "assertion": None,
    }
    token = request.headers.get("X-Gateway-Assertion")
    if token:
        try:
            claims = await request.app[VERIFIER].verify(token)
            answer["assertion"] = {"verified": True, "claims": claims}
        except (jwt.PyJWTError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            answer["assertion"] = {"verified": False, "error": f"{type(exc).__name__}: {exc}"}
    return web.json_response(answer)


async def _verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    verifier = AssertionVerifier(app[SETTINGS])
    app[VERIFIER] = verifier
    yield
    await verifier.close()


def create_acme_app(settings: AcmeSettings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[BOOK] = ContactBook()
    app.cleanup_ctx.append(_verifier_ctx)
    book = app[BOOK]
    book.add("Ann Archer", "ann@acme.example", "Key account since 2019", "seed")
    book.add("Ben Baker", "ben@acme.example", "Prefers email", "seed")
    app.router.add_get("/", home)
    app.router.add_get("/contacts/new", new_contact_form)
    app.router.add_get("/contacts/{id}", contact_page)
    app.router.add_post("/contacts", post_contact_form)
    app.router.add_get("/api/contacts", api_list)
    app.router.add_post("/api/contacts", api_create)
    app.router.add_get("/api/contacts/{id}", api_get)
    app.router.add_delete("/api/contacts/{id}", api_delete)
    app.router.add_get("/events", events)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/whoami", whoami)
    return app
