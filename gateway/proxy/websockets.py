"""Proxied websockets: messages relayed both ways, close codes passed on, idle connections ended.

The upstream is connected first; only when it accepted the upgrade does the client get
its `101` (with the subprotocol the upstream chose), so a refused upstream is a plain
502/504 denial. Then each side's messages go to the other as they arrive. A close from
either side is passed to the other with the same code and reason; codes that may not be
sent on the wire (1005 no status, 1006 abnormal) become 1000 and 1001. No message either
way for `websocket_idle_s` ends both sides with 1001. An aborted flow (grant revoked or
expired) ends both sides with 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from gateway.denials import Denial
from gateway.flow import Flow
from gateway.proxy.streaming import upstream_failure

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
IDLE_CLOSE = 1001
ABORT_CLOSE = 1008
CLOSE_TIMEOUT_S = 5.0

_NOT_SENDABLE = {1005: 1000, 1006: 1001, 1015: 1001}


def sendable(code: int | None) -> int:
    """A close code that may go on the wire for one received (or missing)."""
    if code is None:
        return 1000
    if code in _NOT_SENDABLE:
        return _NOT_SENDABLE[code]
    if 1000 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1002  # protocol error: the peer sent a code that is not allowed


def _client_protocols(request: web.BaseRequest) -> list[str]:
    value = ",".join(request.headers.getall("Sec-WebSocket-Protocol", []))
    return [p.strip() for p in value.split(",") if p.strip()]


async def relay(
    flow: Flow,
    client: aiohttp.ClientSession,
    url: URL,
    headers: Sequence[tuple[str, str]],
) -> None:
    """Proxy the flow's websocket upgrade to `url` until either side closes."""
    route = flow.route
    if route is None:
        raise RuntimeError("relay() needs a routed flow")
    loop = asyncio.get_running_loop()
    forwarded = [(n, v) for n, v in headers if not n.lower().startswith("sec-websocket-")]
    flow.forwarded = True
    try:
        async with asyncio.timeout(route.timeouts.connect_s + route.timeouts.read_s):
            upstream = await client.ws_connect(
                url.with_scheme("wss" if url.scheme == "https" else "ws"),
                headers=forwarded,
                protocols=_client_protocols(flow.request),
                autoclose=False,
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES,
                ssl=route.upstream.verify_tls,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
            )
    except aiohttp.WSServerHandshakeError as exc:
        flow.upstream_status = exc.status
        flow.deny(
            Denial(502, "upstream_refused_websocket", "The application refused the websocket.")
        )
        return
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        flow.deny(upstream_failure(exc))
        return
    flow.upstream_connect_s = loop.time() - flow.started_monotonic
    flow.upstream_status = 101
    try:
        await _relay_open(flow, upstream, route.timeouts.websocket_idle_s)
    finally:
        if not upstream.closed:
            await upstream.close(code=IDLE_CLOSE)
        flow.duration_s = loop.time() - flow.started_monotonic


async def _relay_open(flow: Flow, upstream: aiohttp.ClientWebSocketResponse, idle_s: float) -> None:
    loop = asyncio.get_running_loop()
    protocols = (upstream.protocol,) if upstream.protocol else ()
    downstream = web.WebSocketResponse(
        protocols=protocols, autoclose=False, autoping=True, max_msg_size=MAX_MESSAGE_BYTES
    )
    flow.response = downstream
    flow.status = 101
    flow.websocket = True
    await downstream.prepare(flow.request)
    last_activity = loop.time()
    aborted = asyncio.Event()
    remove_abort = flow.on_abort(lambda _reason: aborted.set())

    async def pump(
        source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        upward: bool,
    ) -> tuple[int | None, str]:
        nonlocal last_activity
        while True:
            message = await source.receive()
            last_activity = loop.time()
            if message.type is WSMsgType.TEXT:
                size = len(message.data.encode())
                await sink.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                size = len(message.data)
                await sink.send_bytes(message.data)
            elif message.type is WSMsgType.CLOSE:
                return message.data, message.extra or ""
            else:  # CLOSING, CLOSED, ERROR: the peer is gone without a close frame
                return 1006, ""
            if upward:
                flow.request_bytes += size
            else:
                flow.response_bytes += size

    async def idle() -> None:
        while True:
            remaining = last_activity + idle_s - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    upward = asyncio.ensure_future(pump(downstream, upstream, True))
    downward = asyncio.ensure_future(pump(upstream, downstream, False))
    watchdog = asyncio.ensure_future(idle())
    stop = asyncio.ensure_future(aborted.wait())
    tasks = {upward, downward, watchdog, stop}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        remove_abort()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    first: aiohttp.ClientWebSocketResponse | web.WebSocketResponse
    second: aiohttp.ClientWebSocketResponse | web.WebSocketResponse
    if stop in done:
        flow.interrupted = f"aborted: {flow.aborted}"
        code, reason, first, second = ABORT_CLOSE, "access ended", downstream, upstream
    elif watchdog in done:
        flow.interrupted = "idle timeout"
        code, reason, first, second = IDLE_CLOSE, "idle timeout", downstream, upstream
    elif upward in done and not upward.cancelled() and upward.exception() is None:
        received, reason = upward.result()
        code, first, second = sendable(received), upstream, downstream
    elif downward in done and not downward.cancelled() and downward.exception() is None:
        received, reason = downward.result()
        code, first, second = sendable(received), downstream, upstream
    else:
        flow.interrupted = "relay failed"
        code, reason, first, second = 1011, "", downstream, upstream
    flow.websocket_close_code = code
    # Pass the close on first, then finish the handshake with the side that started it.
    for side in (first, second):
        with contextlib.suppress(Exception):
            await side.close(code=code, message=reason.encode()[:120])
