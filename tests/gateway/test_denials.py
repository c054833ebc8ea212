"""Denials: RFC 9110 headers enforced at construction, negotiated and escaped when rendered."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.denials import (
    _IDS_PER_DRAW,
    REQUEST_ID,
    Denial,
    _fresh_request_id,
    denial_response,
    method_not_allowed,
    render_body,
    request_id_of,
    wants_html,
)


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html", True),
        ("text/html,application/xhtml+xml,*/*;q=0.8", True),
        ("TEXT/HTML; charset=utf-8", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
        ("text/*", False),
        ("text/html;q=0", False),
        ("text/html;q=0.0, application/json", False),
        ("text/html;q=bogus", False),
        ("text/htmlx", False),
    ],
)
def test_html_only_when_accept_names_it(accept: str, html: bool) -> None:
    assert wants_html(accept) is html


@pytest.mark.parametrize(
    ("status", "headers"),
    [(401, {}), (405, {}), (429, {}), (302, {}), (200, {}), (600, {})],
)
def test_rfc_9110_headers_are_required(status: int, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=str(status)):
        Denial(status, "some_error", "reason", headers)


@pytest.mark.parametrize("code", ["", "Has Space", "semi;colon", "new\nline"])
def test_error_codes_are_snake_case(code: str) -> None:
    with pytest.raises(ValueError, match="snake_case"):
        Denial(400, code, "reason")


def test_required_headers_are_accepted_in_any_case() -> None:
    assert Denial(401, "login_required", "r", {"www-authenticate": 'Cookie realm="gw"'})
    assert method_not_allowed("CONNECT", "GET").headers == {"Allow": "GET"}
    assert Denial(429, "slow_down", "r", {"Retry-After": "3"}).status == 429


DenialClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


async def _answer(
    aiohttp_client: DenialClient, denial: Denial, accept: str | None = None
) -> tuple[int, CIMultiDict[str], bytes, list[str]]:
    """Render `denial` through a real server; also returns the request ids it made."""
    ids: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        ids.append(request_id_of(request))
        ids.append(request_id_of(request))
        ids.append(request[REQUEST_ID])
        return denial_response(denial, request)

    app = web.Application()
    app.router.add_get("/x", handler)
    client = await aiohttp_client(app)
    headers = {"Accept": accept} if accept is not None else {}
    async with client.get("/x", headers=headers) as response:
        return response.status, response.headers.copy(), await response.read(), ids


async def test_json_body(aiohttp_client: DenialClient) -> None:
    status, headers, body, ids = await _answer(
        aiohttp_client, Denial(429, "slow_down", "Wait.", {"Retry-After": "3"})
    )
    assert status == 429
    assert headers["Content-Type"] == "application/json"
    assert headers["Retry-After"] == "3"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Request-Id"] == ids[0]
    assert json.loads(body) == {"error": "slow_down", "reason": "Wait.", "request_id": ids[0]}


async def test_html_body_is_escaped(aiohttp_client: DenialClient) -> None:
    denial = Denial(403, "policy_denied", '<script>alert("x")</script> & more')
    status, headers, body, _ = await _answer(aiohttp_client, denial, "text/html")
    assert status == 403
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "403 Forbidden" in page


def test_request_id_is_escaped_in_html() -> None:
    body, _ = render_body(Denial(404, "not_found", "x"), "<rid>", as_html=True)
    assert b"&lt;rid&gt;" in body
    assert b"<rid>" not in body


def test_unknown_status_still_renders() -> None:
    body, content_type = render_body(Denial(499, "client_closed", "gone"), "r", as_html=True)
    assert content_type.startswith("text/html")
    assert b"499 Error" in body


async def test_request_id_is_made_once_per_request(aiohttp_client: DenialClient) -> None:
    _, _, _, first = await _answer(aiohttp_client, Denial(404, "not_found", "x"))
    _, _, _, second = await _answer(aiohttp_client, Denial(404, "not_found", "x"))
    assert len(first[0]) == 16
    assert first[0] == first[1] == first[2]
    assert second[0] != first[0]


_OTHER: web.RequestKey[str] = web.RequestKey("test_other_state", str)


async def test_request_id_is_kept_when_the_request_holds_other_state(
    aiohttp_client: DenialClient,
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        request[_OTHER] = "state"  # the request's state is no longer empty
        seen.append(request_id_of(request))
        seen.append(request_id_of(request))
        return web.Response()

    app = web.Application()
    app.router.add_get("/x", handler)
    client = await aiohttp_client(app)
    async with client.get("/x") as response:
        assert response.status == 200
    assert len(seen) == 2
    assert seen[0] == seen[1]


def test_request_ids_are_random_hex_and_never_repeat_across_draws() -> None:
    ids = [_fresh_request_id() for _ in range(3 * _IDS_PER_DRAW + 7)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_never_hands_out_its_parents_request_ids() -> None:
    _fresh_request_id()  # the parent now holds spare ids drawn in advance
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits
        try:
            os.write(writer, _fresh_request_id().encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        from_child = pipe.read().decode()
    os.waitpid(child, 0)
    assert re.fullmatch(r"[0-9a-f]{16}", from_child)
    assert from_child != _fresh_request_id()
