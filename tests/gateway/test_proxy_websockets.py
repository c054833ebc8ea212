"""Websockets through the gateway: both ways, close codes passed on, idle and abort endings."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from policies.model import Scope
from tests.gateway.proxyharness import HOST, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]


async def test_messages_flow_both_ways_with_subprotocol(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(
            gw.url + "/ws", headers={"Host": HOST}, protocols=("chat.v1", "other")
        ) as ws,
    ):
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive(timeout=5)).data == b"\x03\x02\x01"
        await ws.close(code=4002, message=b"client done")
    await asyncio.sleep(0.2)
    assert gw.upstream.ws_messages == ["hello"]
    assert gw.upstream.ws_closes == [4002]
    got = gw.upstream.received[0]
    assert got.header("X-Gateway-User") == ["bob"]
    assert got.header("Sec-WebSocket-Protocol") == ["chat.v1,other"]


async def test_the_upstream_handshake_gets_no_invented_headers(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    bare = ("User-Agent", "Accept", "Accept-Encoding")
    async with (
        aiohttp.ClientSession(skip_auto_headers=bare) as client,
        client.ws_connect(gw.url + "/ws", headers={"Host": HOST}) as ws,
    ):
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
    names = {name.lower() for name, _ in gw.upstream.received[0].headers}
    assert "sec-websocket-key" in names
    assert not names & {"user-agent", "accept", "accept-encoding", "content-type"}


async def test_upstream_close_code_reaches_the_client(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(gw.url + "/ws", headers={"Host": HOST}) as ws,
    ):
        await ws.send_str("close:4001")
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 4001
        assert message.extra == "upstream says bye"


async def test_idle_websocket_is_closed(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()  # websocket_idle_s: 1.0 in the test policy
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(gw.url + "/ws", headers={"Host": HOST}) as ws,
    ):
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1001


async def test_aborting_the_grant_closes_the_websocket_with_1008(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(gw.url + "/ws", headers={"Host": HOST}) as ws,
    ):
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "echo:ping"
        in_flight = gw.in_flight
        assert in_flight.abort_grant("g-1", "grant revoked") == 1
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1008
    await asyncio.sleep(0.2)
    assert gw.upstream.ws_closes == [1008]


async def test_read_grant_cannot_open_a_websocket(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(scope=Scope.READ)
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(gw.url + "/ws", headers={"Host": HOST})
        assert refused.value.status == 403
    assert gw.upstream.received == []


async def test_websockets_only_where_the_route_allows(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(websockets="false")
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(gw.url + "/ws", headers={"Host": HOST})
        assert refused.value.status == 403
    assert gw.upstream.received == []
