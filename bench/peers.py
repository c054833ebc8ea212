"""The benchmark's peers, each run as its own process: the upstream and two plain proxies.

    python -m bench.peers upstream                                      # READY <port>
    python -m bench.peers bare-proxy --upstream-port P                  # READY <port>
    python -m bench.peers recording-proxy --upstream-port P --redis-url U   # READY <port>

The upstream answers `/small` with a short body and `/download?n=BYTES` with a streamed
body. The bare proxy is the least a streaming aiohttp reverse proxy does (one shared
keep-alive client session, bodies streamed both ways, hop-by-hop headers dropped): the
baseline the gateway's forward path is measured against. The recording proxy is the bare
proxy plus the least that "recorded before forwarding" can cost: before forwarding, each
request awaits one fixed record appended to a Redis stream, concurrent records sharing
one Redis command (group commit, sent as the gateway's audit writer sends its batches).
It builds, redacts and chains nothing; it is a diagnostic floor, not a gateway. All use
uvloop when installed, like the gateway, and stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
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
UPSTREAM = web.AppKey("bare_proxy_upstream", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RECORDS_STREAM = "bench:recording-proxy"
RECORD = b"r" * 600  # about the size of the gateway's attempt record for `/small`
# One command per batch, like the gateway's audit writer: a pipeline of N XADDs costs N
# commands to pack and parse.
APPEND_RECORDS = """
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'f', ARGV[i])
end
return #ARGV
"""


class GroupCommit:
    """Appends one fixed record per call to a Redis stream and returns once Redis has it.

    Calls made while a batch is in flight wait for the next one, which carries all of
    them in one command: the fewest Redis round trips a record per request can take.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.append = redis.register_script(APPEND_RECORDS)
        self.waiting: list[asyncio.Future[None]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def record(self) -> None:
        accepted = asyncio.get_running_loop().create_future()
        self.waiting.append(accepted)
        if self.flushing is None:
            self.flushing = asyncio.create_task(self._flush())
        await accepted

    async def _flush(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    await self.append(keys=[RECORDS_STREAM], args=[RECORD] * len(batch))
                except Exception as exc:  # every waiting request fails with it
                    for accepted in batch:
                        accepted.set_exception(exc)
                else:
                    for accepted in batch:
                        accepted.set_result(None)
        finally:
            self.flushing = None


def recording_proxy_app(upstream_port: int, redis_url: str) -> web.Application:
    """The bare proxy, each request awaiting its one record in Redis before it goes on."""
    redis = aioredis.Redis.from_url(redis_url)
    records = GroupCommit(redis)

    async def recorded(request: web.Request) -> web.StreamResponse:
        await records.record()
        return await forward(request)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    app = _proxy_app(upstream_port, recorded)
    app.cleanup_ctx.append(redis_ctx)
    return app


def bare_proxy_app(upstream_port: int) -> web.Application:
    return _proxy_app(upstream_port, forward)


def _proxy_app(upstream_port: int, handler: Handler) -> web.Application:
    app = web.Application(client_max_size=0)
    app[UPSTREAM] = f"http://127.0.0.1:{upstream_port}"
    app.cleanup_ctx.append(_client_ctx)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )
    yield
    await app[CLIENT].close()


async def forward(request: web.Request) -> web.StreamResponse:
    """The bare proxy's whole work for one request."""
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROPPED]
    body = request.content if request.body_exists else None
    async with request.app[CLIENT].request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
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
    parser.add_argument("role", choices=("upstream", "bare-proxy", "recording-proxy"))
    parser.add_argument("--upstream-port", type=int)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if args.role == "upstream":
        app = upstream_app()
    elif args.upstream_port is None:
        parser.error(f"{args.role} needs --upstream-port")
    elif args.role == "bare-proxy":
        app = bare_proxy_app(args.upstream_port)
    elif args.redis_url is None:
        parser.error("recording-proxy needs --redis-url")
    else:
        app = recording_proxy_app(args.upstream_port, args.redis_url)
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve_until_stopped(app, auto_decompress=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
