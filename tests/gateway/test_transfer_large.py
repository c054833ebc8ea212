"""1 GiB up and 1 GiB down through the gateway running as its own process.

The gateway's peak resident memory (VmHWM) must stay within a small margin of what it
was before the transfer, so that a proxy that buffers bodies fails; the bytes must
arrive whole (SHA-256 computed while streaming on both ends).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.gateway.gateway_process import HOST

GIB = 1 << 30
BLOCK = 1 << 20
RSS_MARGIN = 64 << 20  # a buffering proxy would grow by about 1 GiB

pytestmark = pytest.mark.slow


def _block(index: int) -> bytes:
    # Every MiB differs (its index leads it), so a dropped or repeated block changes the hash.
    seed = hashlib.sha256(b"transfer").digest() * (BLOCK // 32)
    return index.to_bytes(8, "big") + seed[8:]


def _expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for index in range(size // BLOCK):
        digest.update(_block(index))
    return digest.hexdigest()


def high_water_mark(pid: int) -> int:
    """Peak resident set size of a process in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class BulkUpstream:
    """The customer app for bulk transfers: hashes what it receives, streams what it sends."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2 * GIB)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/download", self.download)
        app.router.add_get("/small", self.small)
        return app

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(BLOCK):
            size += len(chunk)
            digest.update(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        for index in range(size // BLOCK):
            await response.write(_block(index))
        await response.write_eof()
        return response

    async def small(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    ca_file: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    server = TestServer(BulkUpstream().app(), host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port
    await server.close()


@pytest.fixture
def gateway_process(
    tmp_path: Path,
    redis: aioredis.Redis,  # flushed: no earlier test's gateway keys recorded on it
    redis_url: str,
    upstream_port: int,
    project_root: Path,
) -> Iterator[GatewayProcess]:
    log = tmp_path / "gateway.log"
    with log.open("wb") as errors:  # a file, not a pipe: an unread pipe would stall the gateway
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.gateway.gateway_process",
                "--data-dir",
                str(tmp_path / "gw"),
                "--redis-url",
                redis_url,
                "--upstream-port",
                str(upstream_port),
            ],
            cwd=project_root,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("READY "):
            process.kill()
            process.wait(10)
            pytest.fail(f"gateway process did not start: {line!r} {log.read_text()[-2000:]}")
        yield GatewayProcess(process, int(line.split()[1]), tmp_path / "gw" / "tls" / "demo-ca.crt")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def _warm_up(client: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
    """A few ordinary requests, so the baseline includes everything a first request loads."""
    for _ in range(20):
        async with client.get(
            f"{gateway.url}/small", headers={"Host": HOST}, server_hostname=HOST
        ) as response:
            assert response.status == 200, await response.text()
    async with client.post(
        f"{gateway.url}/upload",
        data=_block(0)[: BLOCK // 2],
        headers={"Host": HOST},
        server_hostname=HOST,
    ) as response:
        assert response.status == 200


def _session(gateway: GatewayProcess) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=gateway.client_ssl()),
        timeout=aiohttp.ClientTimeout(total=120),
        auto_decompress=False,
    )


async def test_one_gib_upload_streams_through(gateway_process: GatewayProcess) -> None:
    async with _session(gateway_process) as client:
        await _warm_up(client, gateway_process)
        baseline = high_water_mark(gateway_process.process.pid)

        sent = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for index in range(GIB // BLOCK):
                block = _block(index)
                sent.update(block)
                yield block

        async with client.post(
            f"{gateway_process.url}/upload",
            data=body(),
            headers={"Host": HOST, "Content-Length": str(GIB)},
            server_hostname=HOST,
        ) as response:
            assert response.status == 200, await response.text()
            received = await response.json()
    peak = high_water_mark(gateway_process.process.pid)
    assert received == {"size": GIB, "sha256": sent.hexdigest()}
    assert peak - baseline <= RSS_MARGIN, f"gateway grew by {(peak - baseline) >> 20} MiB"


async def test_one_gib_download_streams_through(gateway_process: GatewayProcess) -> None:
    expected = await asyncio.to_thread(_expected_sha256, GIB)
    async with _session(gateway_process) as client:
        await _warm_up(client, gateway_process)
        baseline = high_water_mark(gateway_process.process.pid)
        digest = hashlib.sha256()
        size = 0
        async with client.get(
            f"{gateway_process.url}/download?n={GIB}",
            headers={"Host": HOST},
            server_hostname=HOST,
        ) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Length"] == str(GIB)
            async for chunk in response.content.iter_chunked(BLOCK):
                size += len(chunk)
                digest.update(chunk)
    peak = high_water_mark(gateway_process.process.pid)
    assert size == GIB
    assert digest.hexdigest() == expected
    assert peak - baseline <= RSS_MARGIN, f"gateway grew by {(peak - baseline) >> 20} MiB"


def test_the_memory_probe_sees_a_buffering_process() -> None:
    """The VmHWM probe is sensitive enough to catch a process that holds 256 MiB at once."""
    code = (
        "import sys; b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ok', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ok\n"
        assert high_water_mark(child.pid) > RSS_MARGIN * 4
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
