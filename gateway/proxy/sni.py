"""The TLS server name (SNI) a client asked for, kept for the 421 check of the route stage.

A server-side `ssl.SSLObject` does not expose the name the client sent, so every TLS
listener's context records it in its SNI callback:

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    record_sni(context)                     # before the context serves connections
    name = sni_of(request)                  # "acme.example", or None (plain HTTP, no SNI)
"""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

_ATTRIBUTE = "gateway_sni"


def _remember(ssl_object: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
    setattr(ssl_object, _ATTRIBUTE, name.lower().rstrip(".") if name else None)


def record_sni(context: ssl.SSLContext) -> None:
    """Make `context` remember each connection's SNI name (keeps an existing callback)."""
    previous = context.sni_callback
    if previous is None:
        context.sni_callback = _remember
        return

    def chained(ssl_object: Any, name: Any, ctx: ssl.SSLContext) -> Any:
        _remember(ssl_object, name, ctx)
        return previous(ssl_object, name, ctx)

    context.sni_callback = chained


def sni_of(request: web.BaseRequest) -> str | None:
    """The server name of the request's TLS connection; None on plain HTTP or without SNI."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    name = getattr(ssl_object, _ATTRIBUTE, None)
    return name if isinstance(name, str) and name else None
