"""`Expect: 100-continue`: the interim answer that lets a waiting client send its body.

Sent only once a flow is authorised and its body is about to be read (by the forwarder,
or by the policy stage reading a form ahead), so that a refused request costs the client
no upload.
"""

from __future__ import annotations

from aiohttp import web


async def send_continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` only once the flow is authorised and about to read."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
