"""The proxy core over real sockets: what reaches the upstream, and what reaches the client."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.cookies import APP_SESSION, CONSOLE_SESSION
from policies.model import Scope
from tests.gateway.proxyharness import HOST, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def _json(
    client: aiohttp.ClientSession, gw: Gateway, method: str, target: str, **kwargs: object
) -> tuple[int, dict[str, object]]:
    headers = {"Host": HOST, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    async with client.request(method, gw.url + target, headers=headers, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, json.loads(await response.read() or b"{}")


async def test_get_is_forwarded_with_identity_and_assertion(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    status, body = await _json(client, gw, "GET", "/hello/world?a=1&b=%20")
    assert status == 200
    assert body["path"] == "/hello/world?a=1&b=%20"
    got = gw.upstream.received[0]
    assert got.header("X-Gateway-User") == ["bob"]
    assert got.header("X-Gateway-Actor") == ["sam"]
    assert got.header("X-Gateway-Grant") == ["g-1"]
    assert got.header("X-Gateway-Assertion")[0].count(".") == 2
    assert got.header("Host") == [f"127.0.0.1:{gw.upstream.port}"]
    assert got.header("X-Forwarded-For") == ["127.0.0.1"]
    assert got.header("X-Forwarded-Proto") == ["http"]
    assert got.header("X-Forwarded-Host") == [HOST]


async def test_spoofing_variants_never_reach_the_upstream(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    spoofed = [
        "X-Gateway-User: mallory",
        "x-gateway-user: mallory2",
        "X_Gateway_Actor: mallory",
        "X-GATEWAY-GRANT: forged",
        "X-Gateway-Assertion: eyJ.forged.jwt",
        "X-Gateway-Anything: x",
        "Forwarded: for=6.6.6.6",
        "X-Forwarded-For: 6.6.6.6",
        "X_Forwarded_For: 6.6.6.7",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: https",
        "X-Real-IP: 6.6.6.6",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "X_HTTP_Method_Override: PUT",
        "Connection: keep-alive, X-Listed-Hop",
        "X-Listed-Hop: gone",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        f"Cookie: {APP_SESSION}=secret1; keep=1",
        f"Cookie: {CONSOLE_SESSION}=secret2; also=2",
        "X-Kept: yes",
    ]
    request = (
        "GET /echo HTTP/1.1\r\nHost: acme.test\r\n" + "\r\n".join(spoofed) + "\r\n\r\n"
    ).encode()
    answer = await gw.raw(request.replace(b"Connection: keep-alive", b"Connection: close"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    got = gw.upstream.received[0]
    names = [name.lower() for name, _ in got.headers]
    for name in names:
        assert not name.replace("_", "-").startswith("x-gateway-") or name in (
            "x-gateway-user",
            "x-gateway-actor",
            "x-gateway-grant",
            "x-gateway-assertion",
        )
    assert got.header("X-Gateway-User") == ["bob"]
    assert got.header("X-Gateway-Actor") == ["sam"]
    assert got.header("X-Gateway-Grant") == ["g-1"]
    assert "eyJ.forged.jwt" not in got.header("X-Gateway-Assertion")
    for gone in (
        "forwarded",
        "x_forwarded_for",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x_http_method_override",
        "x-listed-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-gateway-anything",
        "x_gateway_actor",
    ):
        assert gone not in names, gone
    assert got.header("X-Forwarded-For") == ["127.0.0.1"]
    assert got.header("X-Forwarded-Host") == [HOST]
    assert got.header("X-Forwarded-Proto") == ["http"]
    assert got.header("X-Kept") == ["yes"]
    cookies = got.header("Cookie")
    assert cookies == ["keep=1; also=2"]
    assert all("secret" not in value for _, value in got.headers)


async def test_forwarded_path_is_the_judged_path(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    for raw, forwarded in [
        ("/a/./b//c/../d", "/a/b/d"),
        ("/%7Euser/%41", "/~user/A"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/x%2e%2e/y", "/x../y"),
    ]:
        answer = await gw.raw(
            f"GET {raw}?q=%2F HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 200"), (raw, answer[:300])
        assert gw.upstream.received[-1].raw_path == forwarded + "?q=%2F"


async def test_dot_segments_cannot_escape_into_a_denied_prefix(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    for raw in ["/public/../admin/x", "/%2e%2e/admin", "/public/%2e%2e/admin", "//admin"]:
        answer = await gw.raw(
            f"GET {raw} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 403"), (raw, answer[:300])
        assert b'"policy_denied"' in answer
    assert gw.upstream.received == []


@pytest.mark.parametrize("raw", ["/a%2Fb", "/a%5Cb", "/a%00b", "/a\\b"])
async def test_encoded_separators_and_nul_are_refused(
    gateway_factory: GatewayFactory, raw: str
) -> None:
    gw = await gateway_factory()
    answer = await gw.raw(
        f"GET {raw} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert gw.upstream.received == []


async def test_encoded_slash_passes_where_the_route_allows_it(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(allow_encoded_slashes="true")
    answer = await gw.raw(
        f"GET /files/a%2fb HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert gw.upstream.received[0].raw_path == "/files/a%2Fb"


async def test_post_body_streams_with_content_length(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    payload = bytes(range(256)) * 4000
    status, body = await _json(client, gw, "POST", "/echo", data=payload)
    assert status == 200
    assert body["body_len"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()
    got = gw.upstream.received[0]
    assert got.header("Content-Length") == [str(len(payload))]
    assert got.header("Transfer-Encoding") == []


async def test_upload_is_streamed_not_buffered(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    """The upstream sees the first chunk while the client still holds back the rest."""
    gw = await gateway_factory()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await asyncio.wait_for(gw.upstream.first_chunk_in.wait(), 5)
        yield b"b" * 1000

    async with client.post(gw.url + "/upload", data=body(), headers={"Host": HOST}) as response:
        assert response.status == 200
        result = await response.json()
    assert result["size"] == 2000
    got = gw.upstream.received[0]
    assert got.header("Transfer-Encoding") == ["chunked"]
    assert got.header("Content-Length") == []


async def test_chunked_response_and_no_decompression(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    async with client.get(gw.url + "/chunked", headers={"Host": HOST}) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert await response.read() == b"part0;part1;part2;part3;part4;"
    async with client.get(
        gw.url + "/gzip", headers={"Host": HOST, "Accept-Encoding": "gzip"}
    ) as response:
        raw = await response.read()
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Length"] == str(len(raw))
        assert gzip.decompress(raw) == b"hello " * 100
    assert gw.upstream.received[1].header("Accept-Encoding") == ["gzip"]


async def test_gateway_adds_no_request_headers_the_client_did_not_send(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    answer = await gw.raw(
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")
    names = {name.lower() for name, _ in gw.upstream.received[0].headers}
    assert not names & {"user-agent", "accept-encoding", "accept", "content-type", "cookie"}


async def test_bodies_get_no_invented_headers_either(gateway_factory: GatewayFactory) -> None:
    """A body the client sent without a Content-Type (either framing) gets none upstream."""
    gw = await gateway_factory()
    sized = await gw.raw(
        f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n"
        "Connection: close\r\n\r\nhello".encode()
    )
    chunked = await gw.raw(
        f"PUT /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
    )
    assert sized.startswith(b"HTTP/1.1 200")
    assert chunked.startswith(b"HTTP/1.1 200")
    assert len(gw.upstream.received) == 2
    for got in gw.upstream.received:
        assert got.body == b"hello"
        names = {name.lower() for name, _ in got.headers}
        assert not names & {"user-agent", "accept-encoding", "accept", "content-type"}


async def test_server_sent_events_arrive_event_by_event(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    async with client.get(gw.url + "/sse", headers={"Host": HOST}) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b"id: 1\ndata: first\n\n"
        gw.upstream.first_event_seen.set()
        second = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert second == b"id: 2\ndata: second\n\n"


async def test_location_and_set_cookie_are_rewritten(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    async with client.get(
        gw.url + "/redirect", headers={"Host": f"{HOST}:8443"}, allow_redirects=False
    ) as response:
        assert response.status == 302
        assert response.headers["Location"] == f"http://{HOST}:8443/landing?x=1"
        assert response.headers["Content-Location"] == "/relative"
        cookies = response.headers.getall("Set-Cookie")
    assert cookies == ["app=1; Path=/; HttpOnly"]


async def test_head_and_no_content(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    async with client.head(gw.url + "/big?n=5000", headers={"Host": HOST}) as response:
        assert response.status == 200
        assert await response.read() == b""
    assert gw.upstream.received[0].method == "HEAD"


async def test_large_download_streams_intact(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    size = 8 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    async with client.get(gw.url + f"/big?n={size}", headers={"Host": HOST}) as response:
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_any():
            received += len(chunk)
            digest.update(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


async def test_upstream_refused_is_502_and_timeout_is_504(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    async with client.get(gw.url + "/x", headers={"Host": "down.test"}) as response:
        # down.test is routed to port 1 on loopback, where nothing listens
        assert response.status == 502
        assert (await response.json())["error"] == "upstream_unavailable"
    async with client.get(gw.url + "/slow", headers={"Host": HOST}) as response:
        assert response.status == 504
        assert (await response.json())["error"] == "upstream_timeout"


async def test_upstream_stalling_mid_body_cuts_the_client(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    async with client.get(gw.url + "/hang", headers={"Host": HOST}) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 10)


async def test_read_grant_cannot_write(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(scope=Scope.READ)
    answer = await gw.raw(
        f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n"
        "X-HTTP-Method-Override: GET\r\nConnection: close\r\n\r\nhi".encode()
    )
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"read grant" in answer
    assert gw.upstream.received == []
    answer = await gw.raw(
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")


async def test_request_header_edits_of_the_route(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(
        request_headers="{set: {X-Tenant: acme}, remove: [X-Debug]}",
        response_headers="{set: {X-Frame-Options: DENY}, remove: [X-Powered-By]}",
        preserve_host="true",
    )
    answer = await gw.raw(
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nX-Debug: 1\r\nX-Tenant: evil\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"X-Frame-Options: DENY" in answer
    got = gw.upstream.received[0]
    assert got.header("X-Tenant") == ["acme"]
    assert got.header("X-Debug") == []
    assert got.header("Host") == [HOST]


async def test_compressed_request_body_passes_byte_for_byte(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()
    packed = gzip.compress(b'{"a": 1}' * 50)
    status, body = await _json(
        client, gw, "POST", "/echo", data=packed, headers={"Content-Encoding": "gzip"}
    )
    assert status == 200
    assert body["body_sha256"] == hashlib.sha256(packed).hexdigest()
    assert gw.upstream.received[0].header("Content-Encoding") == ["gzip"]


async def test_expect_continue_only_once_authorised(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(
            f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert gw.upstream.received[0].body == b"hello"
    assert gw.upstream.received[0].header("Expect") == []
    # a denied request never hears 100 Continue: its body is never asked for
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(
            f"POST /admin HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"Connection: close" in answer


async def test_client_address_from_a_trusted_proxy_only(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    answer = await gw.raw(
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 6.6.6.6\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")
    flow = gw.grant_stage.seen[0]
    assert flow.client_ip == "127.0.0.1"  # loopback is not among the trusted proxies


async def test_concurrent_requests_each_get_their_own_answer(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory()

    async def one(index: int) -> tuple[int, dict[str, object]]:
        return await _json(client, gw, "POST", f"/echo/{index}", data=str(index).encode() * index)

    results = await asyncio.gather(*(one(i) for i in range(1, 41)))
    for index, (status, body) in enumerate(results, start=1):
        assert status == 200
        assert body["path"] == f"/echo/{index}"
        assert body["body_len"] == len(str(index)) * index
    bodies = await gw.audit_settled(40)
    attempts = {b["event"]["id"] for b in bodies if b["record"] == "http.attempt"}
    outcomes = [b["event"]["id"] for b in bodies if b["record"] == "http.outcome"]
    assert len(attempts) == 40
    assert sorted(outcomes) == sorted(attempts)


async def test_client_leaving_still_gets_one_outcome(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    _, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(f"GET /slow HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    for _ in range(200):
        if gw.upstream.received:
            break
        await asyncio.sleep(0.01)
    writer.close()
    bodies = await gw.audit_settled(1)
    outcomes = [b for b in bodies if b["record"] in ("http.outcome", "http.denial")]
    assert len(outcomes) == 1
    assert outcomes[0]["error"]["code"] == "client_closed"


async def test_no_content_and_not_modified_pass_without_a_body(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    answer = await gw.raw(
        f"GET /nocontent HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204")
    assert b'ETag: "v1"' in head
    assert body == b""
    answer = await gw.raw(
        f'GET /nocontent HTTP/1.1\r\nHost: {HOST}\r\nIf-None-Match: "v1"\r\n'
        "Connection: close\r\n\r\n".encode()
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 304")
    assert body == b""
    assert b"Transfer-Encoding" not in head


async def test_header_names_keep_their_case_and_odd_bytes_do_not_break(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    answer = await gw.raw(
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nX-MiXed-Case: a\r\nX-Latin: caf\xe9\r\n"
        "Connection: close\r\n\r\n".encode("latin-1")
    )
    assert answer.startswith(b"HTTP/1.1 200")
    got = gw.upstream.received[0]
    assert ("X-MiXed-Case", "a") in got.headers
    assert got.header("X-Latin") == ["caf\xef\xbf\xbd"]  # U+FFFD as UTF-8, read as latin-1
