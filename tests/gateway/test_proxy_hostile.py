"""Hostile requests and upstreams found in review: what is judged is what is forwarded, a
stream never outlives its grant, and nothing under `/.gateway/` leaves the gateway."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import jwt
import pytest

from gateway.clock import ManualClock
from gateway.flow import REMEMBERED_ENDED_GRANTS, REMEMBERED_ENDED_SESSIONS, InFlightFlows
from gateway.identity import ActingGrant
from policies.model import Scope
from tests.gateway.proxyharness import HOST, SAM, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]

WS_HANDSHAKE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(answer.partition(b"\r\n\r\n")[2])
    return decoded


def _post(target: str, headers: str = "") -> bytes:
    """A raw, bodiless POST of `target` to the routed host, `headers` (CRLF-ended) added."""
    return (
        f"POST {target} HTTP/1.1\r\nHost: {HOST}\r\n{headers}"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()


def _expiring_grant(gw: Gateway, clock: ManualClock, seconds: float) -> None:
    """Flows from now on act under a grant that ends `seconds` from now by the Clock (which
    stands still: the grant ends while the stream is open, and no event announces it)."""
    now = clock.now()
    gw.grant_stage.grant = ActingGrant(
        "g-1", "acme", "bob", SAM, Scope.WRITE, now - 60, now + seconds
    )


async def test_a_websocket_upgrade_by_another_method_is_not_forwarded_as_get(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    for method in ("POST", "DELETE", "PUT"):
        answer = await gw.raw(
            f"{method} /ws HTTP/1.1\r\nHost: {HOST}\r\n{WS_HANDSHAKE}"
            "Content-Length: 0\r\n\r\n".encode(),
            wait_s=5,
        )
        assert _status(answer) == 400, answer[:200]
        assert _body(answer)["error"] == "bad_upgrade"
    # SECURITY: judged as POST/DELETE/PUT, the upgrade would have reached the upstream as GET
    assert gw.upstream.received == []


async def test_a_websocket_is_closed_when_its_grant_ends(
    gateway_factory: GatewayFactory, clock: ManualClock
) -> None:
    gw = await gateway_factory()
    _expiring_grant(gw, clock, 1.0)
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(gw.url + "/ws", headers={"Host": HOST}) as ws,
    ):
        closed: aiohttp.WSMessage | None = None
        # kept busy (the idle timeout never fires) well past the grant's end
        for index in range(30):
            await ws.send_str(f"m{index}")
            message = await ws.receive(timeout=5)
            if message.type is not aiohttp.WSMsgType.TEXT:
                closed = message
                break
            await asyncio.sleep(0.1)
        assert closed is not None, "the websocket outlived its grant"
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert closed.data == 1008
    bodies = await gw.audit_settled(1)
    aborted = [b for b in bodies if b.get("error", {}).get("code") == "aborted"]
    assert [b["error"]["message"] for b in aborted] == ["grant_expired"]


async def test_a_streaming_response_is_cut_when_its_grant_ends(
    gateway_factory: GatewayFactory, clock: ManualClock
) -> None:
    gw = await gateway_factory()
    _expiring_grant(gw, clock, 1.0)
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/sse", headers={"Host": HOST}) as response,
    ):
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first.startswith(b"id: 1")
        try:
            rest = await asyncio.wait_for(response.content.read(), 5)
        except aiohttp.ClientPayloadError:
            rest = b""
        assert b"id: 2" not in rest
    bodies = await gw.audit_settled(1)
    aborted = [b for b in bodies if b.get("error", {}).get("code") == "aborted"]
    assert [b["error"]["message"] for b in aborted] == ["grant_expired"]


async def test_a_grant_ended_before_forwarding_reaches_nothing(
    gateway_factory: GatewayFactory, clock: ManualClock
) -> None:
    gw = await gateway_factory()
    _expiring_grant(gw, clock, 0.0)
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/echo", headers={"Host": HOST}) as response,
    ):
        assert response.status == 403
        assert (await response.json())["error"] in ("grant_expired", "grant_ended")
    assert gw.upstream.received == []


async def test_no_spelling_of_the_gateway_prefix_is_forwarded(
    gateway_factory: GatewayFactory,
) -> None:
    # A case-insensitive upstream reads /.GATEWAY/ as /.gateway/; servlet containers cut
    # `;params`; NFKC folds the fullwidth full stop: none of them is the customer's path.
    gw = await gateway_factory(case_insensitive="true")
    for path in [
        "/.GATEWAY/auth?code=abc",
        "/.Gateway/logout",
        "/.gateway;x/auth",
        "/%EF%BC%8Egateway/auth",
    ]:
        answer = await gw.raw(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        assert _status(answer) in (400, 404), (path, answer[:200])
    assert gw.upstream.received == []


async def test_the_assertion_audience_is_the_routed_origin_however_host_is_spelt(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    for host in ["acme.test", "ACME.test.", "acme.test:80", "Acme.Test.:80", "acme.test:8080"]:
        answer = await gw.raw(
            f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        assert _status(answer) == 200, (host, answer[:200])
    audiences = [
        jwt.decode(got.header("X-Gateway-Assertion")[0], options={"verify_signature": False})["aud"]
        for got in gw.upstream.received
    ]
    # one origin, serialised as RFC 6454 does (the port only when it is not the default)
    assert audiences == [f"http://{HOST}"] * 4 + [f"http://{HOST}:8080"]


async def test_a_flow_whose_grant_was_revoked_during_its_check_is_not_forwarded(
    gateway_factory: GatewayFactory,
) -> None:
    # The grant check read Redis just before the revocation; its event was heard (no flow
    # in flight yet) before the check's answer came back: the flow joins afterwards.
    gw = await gateway_factory()
    assert gw.in_flight.abort_grant("g-1", "grant_revoked") == 0
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/echo", headers={"Host": HOST}) as response,
    ):
        assert response.status == 403
        assert (await response.json())["error"] == "grant_ended"
    assert gw.upstream.received == []
    assert len(gw.in_flight) == 0


async def test_a_grant_ended_only_for_now_still_serves_later_flows(
    gateway_factory: GatewayFactory,
) -> None:
    # A member change ends the flows in flight, but the grant may be live again after it.
    gw = await gateway_factory()
    assert gw.in_flight.abort_grant("g-1", "member_disabled") == 0
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/echo", headers={"Host": HOST}) as response,
    ):
        assert response.status == 200
    assert len(gw.upstream.received) == 1


def test_remembered_ended_grants_are_bounded(clock: ManualClock) -> None:
    in_flight = InFlightFlows()
    for index in range(REMEMBERED_ENDED_GRANTS + 10):
        in_flight.abort_grant(f"g-{index}", "grant_expired")
    assert len(in_flight._ended) == REMEMBERED_ENDED_GRANTS
    assert "g-0" not in in_flight._ended
    assert in_flight._ended[f"g-{REMEMBERED_ENDED_GRANTS + 9}"] == "grant_expired"


def test_remembered_ended_sessions_are_bounded() -> None:
    in_flight = InFlightFlows()
    for index in range(REMEMBERED_ENDED_SESSIONS + 10):
        in_flight.abort_session(f"s-{index}")
    assert len(in_flight._ended_sessions) == REMEMBERED_ENDED_SESSIONS
    assert "s-0" not in in_flight._ended_sessions
    assert f"s-{REMEMBERED_ENDED_SESSIONS + 9}" in in_flight._ended_sessions


async def test_pages_of_another_orgs_host_cannot_act_here(gateway_factory: GatewayFactory) -> None:
    # All routed hosts are one site: beta's page sends acme's SameSite=Lax cookie along.
    gw = await gateway_factory()
    for origin in ["https://beta.test", "http://beta.test:8443", "null", "https://evil.example"]:
        answer = await gw.raw(_post("/echo", f"Origin: {origin}\r\n"))
        assert _status(answer) == 403, (origin, answer[:200])
        assert _body(answer)["error"] == "cross_origin"
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(
                gw.url + "/ws", headers={"Host": HOST}, origin="https://beta.test"
            )
        assert refused.value.status == 403
    assert gw.upstream.received == []


async def test_pages_of_this_orgs_hosts_may_act_here(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    for origin in [f"https://{HOST}", f"http://{HOST.upper()}:8443", "https://api.acme.test"]:
        answer = await gw.raw(_post("/echo", f"Origin: {origin}\r\n"))
        assert _status(answer) == 200, (origin, answer[:200])
    assert len(gw.upstream.received) == 3


async def test_a_method_override_in_the_query_is_judged_too(
    gateway_factory: GatewayFactory,
) -> None:
    # Symfony (and method-override setups reading the query) take POST ?_method=DELETE for
    # a DELETE: the rule denying DELETE must see it.
    gw = await gateway_factory()
    for query in [
        "_method=DELETE",
        "_method=delete",
        "a=1&%5Fmethod=PUT",
        "_m%65thod=DELETE",
        "_method=GET&_method=PUT",
        # pairs split at ';' too, as some parsers do
        "_method=DELETE;x=1",
        "x=1;_method=PUT",
    ]:
        answer = await gw.raw(_post(f"/records/7?{query}"))
        assert _status(answer) == 403, (query, answer[:200])
        assert _body(answer)["error"] == "policy_denied"
    assert gw.upstream.received == []
    for query in ["_method=PATCH", "x_method=DELETE", "q=_method"]:
        answer = await gw.raw(_post(f"/records/7?{query}"))
        assert _status(answer) == 200, (query, answer[:200])
    assert len(gw.upstream.received) == 3


async def test_many_method_overrides_are_refused_not_judged_one_by_one(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    query = "&".join(f"_method=M{index}" for index in range(500))
    answer = await gw.raw(_post(f"/echo?{query}"))
    assert _status(answer) == 403
    assert _body(answer)["error"] == "policy_denied"
    assert gw.upstream.received == []


async def test_an_upstream_switching_protocols_unasked_is_a_502(
    gateway_factory: GatewayFactory,
) -> None:
    # Upgrade headers never reach the upstream on a plain request: a 101 (or any 1xx as
    # the final answer) is a broken or hostile upstream, and must not leave the client's
    # connection switched to nothing.
    async def answer_101(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nRAW BYTES"
        )
        await writer.drain()
        try:
            async with asyncio.timeout(15):
                await reader.read()  # until the gateway lets go of this connection
        finally:
            writer.close()
            await writer.wait_closed()

    raw = await asyncio.start_server(answer_101, "127.0.0.1", 0)
    try:
        port = raw.sockets[0].getsockname()[1]
        gw = await gateway_factory(upstream_port=port)
        answer = await gw.raw(
            f"GET /x HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), wait_s=3
        )
        assert _status(answer) == 502
        assert _body(answer)["error"] == "upstream_bad_answer"
        assert b"RAW BYTES" not in answer
    finally:
        raw.close()


async def test_a_malformed_websocket_handshake_is_a_400_and_opens_nothing_upstream(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    for handshake in [
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\n"
        "Sec-WebSocket-Version: 13\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n",
    ]:
        answer = await gw.raw(
            f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\n{handshake}Connection: close\r\n\r\n".encode()
        )
        assert _status(answer) == 400, answer[:200]
        assert _body(answer)["error"] == "bad_upgrade"
    assert gw.upstream.received == []
