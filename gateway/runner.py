"""The aiohttp runner for the gateway app: protocol-level errors answered in the gateway's format.

aiohttp answers requests its parser refuses (malformed request line or headers, bad
framing, limits) before any handler runs, in its own plain-text format. `GatewayRunner`
makes those answers go through `gateway.denials` like every other error: JSON
`{error, reason, request_id}` or HTML by `Accept`, connection closed.

    runner = GatewayRunner(app, **runner_kwargs(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 8443, ssl_context=context)
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.denials import Denial, denial_response

log = logging.getLogger(__name__)


def protocol_denial(status: int, exc: BaseException | None) -> Denial:
    """The denial for a request aiohttp could not parse or handle."""
    if isinstance(exc, LineTooLong):
        return Denial(431, "headers_too_large", "A request line or header is far too long.")
    if isinstance(exc, BadHttpMethod):
        return Denial(400, "malformed_request", "This is not an HTTP request.")
    if 400 <= status < 500:
        return Denial(status, "malformed_request", "The request is malformed.")
    # The reason never echoes the exception: it may carry internal detail.
    return Denial(500, "internal_error", "The gateway failed; nothing was forwarded.")


class _GatewayRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response went out already; only a broken connection is honest.
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            log.error("error handling request from %s", request.remote, exc_info=exc)
        else:
            log.info("refused request from %s: %s", request.remote, message or exc)
        response = denial_response(protocol_denial(status, exc), request)
        response.force_close()
        return response


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer protocol errors via `gateway.denials`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the per-connection handler class; the server made by the
        # app is re-classed to one that differs only in the handler class it creates.
        server.__class__ = _GatewayServer
        return server
