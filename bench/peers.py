"""The benchmark's peers, each run as its own process: the upstream and a bare proxy.

    python -m bench.peers upstream                       # prints READY <port>
    python -m bench.peers bare-proxy --upstream-port P   # prints READY <port>

The upstream answers `/small` with a short body and `/download?n=BYTES` with a streamed
body. The bare proxy is the least a streaming aiohttp reverse proxy does (one shared
keep-alive client session, bodies streamed both ways, hop-by-hop headers dropped): the
baseline the gateway's forward path is measured against. Both use uvloop when installed,
like the gateway, and stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway.heap import settle
from gateway.proxy.headers import HOP_BY_HOP
from gateway.server import loop_factory

SMALL_BODY = b'{"id": 1, "name": "Ann Archer", "email": "ann@acme.example"}\n'
BLOCK = 1 << 20
# The gateway's hop-by-hop set, plus what aiohttp sets itself for the next hop.
DROPPED = HOP_BY_HOP | {"host", "content-length"}


def upstream_app() -> web.Application:
    block = b"x" * BLOCK

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL_BODY, content_type="application/json")

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("n", "0"))
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        sent = 0
        while sent < size:
            part = block[: size - sent]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.json_response({"size": size})

    app = web.Application(client_max_size=0)
    app.router.add_get("/small", small)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    return app


CLIENT = web.AppKey("bare_proxy_client", aiohttp.ClientSession)


def bare_proxy_app(upstream_port: int) -> web.Application:
    base = f"http://127.0.0.1:{upstream_port}"

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        app[CLIENT] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        yield
        await app[CLIENT].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROPPED]
        body = request.content if request.body_exists else None
        async with request.app[CLIENT].request(
            request.method,
            base + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in DROPPED:
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=0)
    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve_until_stopped(app: web.Application, **settings: Any) -> None:
    """Serve on a free loopback port, print READY <port>, stop on SIGTERM/SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    runner = web.AppRunner(app, access_log=None, **settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    settle()  # the gateway's own serving GC settings (gateway.heap), for a fair comparison
    print(f"READY {runner.addresses[0][1]}", flush=True)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("role", choices=("upstream", "bare-proxy"))
    parser.add_argument("--upstream-port", type=int)
    args = parser.parse_args()
    if args.role == "upstream":
        app = upstream_app()
    elif args.upstream_port is None:
        parser.error("bare-proxy needs --upstream-port")
    else:
        app = bare_proxy_app(args.upstream_port)
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve_until_stopped(app, auto_decompress=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
