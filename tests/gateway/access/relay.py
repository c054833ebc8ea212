"""A loopback TCP relay to the test Redis that can go silent: a dropped network path.

While `frozen`, bytes are read but held, in both directions, and no connection is closed:
what a client sees when a firewall or NAT drops a long-lived connection without a reset.
While `holding_replies`, only Redis's replies are held: a command runs, its answer is late.
`reply_delay_s` delays every chunk of replies: a network with that round trip.

    async with Relay(redis_server.socket_path) as relay:
        client = aioredis.Redis(host="127.0.0.1", port=relay.port)
        relay.frozen = True
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import TracebackType


class Relay:
    def __init__(self, unix_socket: Path) -> None:
        self.unix_socket = unix_socket
        self.frozen = False
        self.holding_replies = False
        self.reply_delay_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(str(self.unix_socket))
        self._writers += [client_w, server_w]
        for source, sink, replies in ((client_r, server_w, False), (server_r, client_w, True)):
            task = asyncio.create_task(self._pipe(source, sink, replies))
            self._tasks.add(task)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool
    ) -> None:
        while data := await source.read(65536):
            while self.frozen or (replies and self.holding_replies):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if replies and self.reply_delay_s:
                await asyncio.sleep(self.reply_delay_s)
            sink.write(data)
            await sink.drain()
        sink.close()
