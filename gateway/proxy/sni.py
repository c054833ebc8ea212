"""The TLS server name (SNI) a client asked for, and the one check that it names the Host.

A server-side `ssl.SSLObject` does not expose the name the client sent, so every TLS
listener's context records it in its SNI callback:

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    record_sni(context)                     # before the context serves connections
    name = sni_of(request)                  # "acme.example", or None (plain HTTP, no SNI)
    denial = misdirected_to(request, host)  # a 421 Denial when SNI names another host
"""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

from gateway.denials import Denial, misdirected

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


def misdirected_to(request: web.BaseRequest, host: str) -> Denial | None:
    """A 421 when the request's TLS connection was opened for a server name other than
    `host` (the console's, or the routed host the Host header names); None otherwise."""
    sni = sni_of(request)
    # SECURITY: a connection opened for one host must not carry another's requests: the
    # console origin and every routed host (whose pages run the customer's JavaScript) are
    # kept apart even where one certificate covers them all.
    if sni is not None and sni != host:
        return misdirected(f"This connection was opened for {sni}, not {host}.")
    return None
