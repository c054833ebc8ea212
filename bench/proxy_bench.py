"""The forward-path benchmark: the gateway against a bare proxy and the upstream directly.

Three processes answer the same small request: the upstream itself, a bare streaming
aiohttp proxy in front of it (`bench.peers`), and the gateway in front of it
(`bench.gateway_peer`: the real app with every production stage, a real approved grant
in Redis checked by the real grant stage; only the session and MFA stages are replaced
by a stand-in naming the logged-in staff member). Its Redis is an embedded redis-server
with the production default: AOF with `appendfsync always`, so every audit record is on
disk before the request is forwarded. Both proxies run on uvloop (when installed) with
access logs off, over the same upstream, under the same load, in the same run. The same load (32
keep-alive connections) hits each in turn, in interleaved rounds; then 1 GiB goes down
and 1 GiB goes up through the gateway while its peak RSS (VmHWM) is watched.

All three listen on plain HTTP on loopback: wrk sets the TLS server name from the URL's
host, and these hosts do not resolve here, so TLS would make the comparison unequal.

Each line also shows the CPU time the answering process used per request while it was
measured: on this 2-core machine, shared with the load generator, the upstream and
Redis, requests/s swing with other load, while CPU per request says where the cost is.

Two more processes are diagnostics, shown beside the others and never part of a target.
"no audit" is the same gateway with its audit-in and audit-out stages removed: what the
two audit records of every request cost. "1 record" is the bare proxy plus the least that
recording before forwarding can cost (`bench.peers`, recording-proxy): each request
awaits one fixed record group-committed to the same Redis before it is forwarded,
nothing built, redacted or chained. It shows how far below the bare proxy any proxy that
keeps DESIGN's rule "the attempt is accepted by Redis before forwarding" starts.

Targets: gateway >= 0.9x the bare proxy's requests/s; a 1 GiB transfer raises the
gateway's peak RSS by <= 32 MiB.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from bench.gateway_peer import STAND_IN, WITHOUT_AUDIT
from bench.load import LoadResult, generate_load, which_tool
from gateway.embedded_redis import EmbeddedRedis
from tests.gateway.gateway_process import HOST

CONNECTIONS = 32
DURATION_S = float(os.environ.get("BENCH_DURATION_S", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
GIB = 1 << 30
RATIO_TARGET = 0.9
NO_AUDIT = "no audit"  # diagnostic peer: the gateway with its audit stages removed
ONE_RECORD = "1 record"  # diagnostic peer: the bare proxy awaiting one durable record
RSS_TARGET = 32 << 20
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def _process(log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A peer process; its stderr goes to `log` (an unread pipe would fill and stall it)."""
    with log.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            process.kill()
            process.wait(10)
            raise RuntimeError(f"{' '.join(args)} did not start: {line!r}\n{_tail(log)}")
        yield process, int(line.split()[1])
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def high_water_mark(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def _check(port: int) -> bytes:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{port}/small", headers={"Host": HOST}) as response,
    ):
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"port {port} answered {response.status}: {body[:300]!r}")
        return body


async def _transfer(port: int, direction: str) -> int:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as client:
        if direction == "down":
            size = 0
            async with client.get(
                f"http://127.0.0.1:{port}/download?n={GIB}", headers={"Host": HOST}
            ) as response:
                async for chunk in response.content.iter_chunked(1 << 20):
                    size += len(chunk)
            return size
        block = b"u" * (1 << 20)

        async def body() -> object:
            for _ in range(GIB >> 20):
                yield block

        async with client.post(
            f"http://127.0.0.1:{port}/upload",
            data=body(),
            headers={"Host": HOST, "Content-Length": str(GIB)},
        ) as response:
            return int((await response.json())["size"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its own threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(name: str, port: int) -> LoadResult:
    return generate_load(
        f"http://127.0.0.1:{port}/small",
        host=HOST,
        connections=CONNECTIONS,
        duration_s=DURATION_S,
    )


def main() -> int:
    tool = which_tool()
    print(f"forward-path benchmark: load by {tool}", end="")
    print(
        " (Debian's wrk)"
        if tool == "wrk"
        else " (wrk not installed: a Python load generator, slower than wrk)"
    )
    print(
        f"  {CONNECTIONS} connections, {DURATION_S:g} s per run, {ROUNDS} interleaved rounds, "
        "small JSON answers, plain HTTP on loopback"
    )
    print(f"  gateway: {STAND_IN}")
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    redis = EmbeddedRedis(work / "redis", appendfsync="always", persistent=True)
    redis.start()
    try:
        with (
            _process(work / "upstream.log", "bench.peers", "upstream") as (upstream, upstream_port),
            _process(
                work / "bare-proxy.log",
                "bench.peers",
                "bare-proxy",
                "--upstream-port",
                str(upstream_port),
            ) as (
                bare,
                bare_port,
            ),
            _process(
                work / "gateway.log",
                "bench.gateway_peer",
                "--data-dir",
                str(work / "gateway"),
                "--redis-url",
                redis.url,
                "--upstream-port",
                str(upstream_port),
            ) as (gateway, gateway_port),
            _process(
                work / "gateway-without-audit.log",
                "bench.gateway_peer",
                "--data-dir",
                str(work / "gateway-without-audit"),
                "--redis-url",
                redis.url + "?db=1",  # a directory and grant of its own
                "--upstream-port",
                str(upstream_port),
                "--without-audit",
            ) as (unaudited, unaudited_port),
            _process(
                work / "recording-proxy.log",
                "bench.peers",
                "recording-proxy",
                "--upstream-port",
                str(upstream_port),
                "--redis-url",
                redis.url + "?db=2",
            ) as (recording, recording_port),
        ):
            targets = {
                "direct": upstream_port,
                "bare proxy": bare_port,
                "gateway": gateway_port,
                NO_AUDIT: unaudited_port,
                ONE_RECORD: recording_port,
            }
            bodies = {name: asyncio.run(_check(port)) for name, port in targets.items()}
            if len(set(bodies.values())) != 1:
                raise RuntimeError(f"the peers answer differently: {bodies}")
            for port in targets.values():  # warm-up: connections, caches, first-use imports
                generate_load(
                    f"http://127.0.0.1:{port}/small",
                    host=HOST,
                    connections=CONNECTIONS,
                    duration_s=1,
                )
            results: dict[str, list[LoadResult]] = {name: [] for name in targets}
            pids = {
                "direct": upstream.pid,
                "bare proxy": bare.pid,
                "gateway": gateway.pid,
                NO_AUDIT: unaudited.pid,
                ONE_RECORD: recording.pid,
            }
            cpu_s: dict[str, float] = dict.fromkeys(targets, 0.0)
            for _ in range(ROUNDS):
                for name, port in targets.items():
                    before = cpu_seconds(pids[name])
                    results[name].append(_measure(name, port))
                    cpu_s[name] += cpu_seconds(pids[name]) - before
            rps = {name: statistics.mean(r.rps for r in runs) for name, runs in results.items()}
            errors = {name: sum(r.errors for r in runs) for name, runs in results.items()}
            print()
            cpu_us: dict[str, float] = {}
            for name in targets:
                runs = ", ".join(f"{r.rps:,.0f}" for r in results[name])
                served = sum(r.requests for r in results[name])
                cpu = cpu_us[name] = cpu_s[name] / served * 1e6 if served else 0.0
                detail = f"(runs: {runs}; errors: {errors[name]}; {cpu:,.0f} µs CPU/request)"
                print(f"  {name:<11} {rps[name]:>10,.0f} req/s   {detail}")
            print(f"  ({NO_AUDIT}: {WITHOUT_AUDIT})")
            print(
                f"  ({ONE_RECORD}: the bare proxy awaiting one fixed record group-committed to "
                "Redis before forwarding; the floor of recording before forwarding)"
            )
            to_bare = rps["gateway"] / rps["bare proxy"]
            to_direct = rps["gateway"] / rps["direct"]
            print()
            print(
                f"  gateway / bare proxy = {to_bare:.2f}x   (target >= {RATIO_TARGET}x: "
                f"{'met' if to_bare >= RATIO_TARGET else 'NOT met'})"
            )
            print(f"  gateway / direct     = {to_direct:.2f}x")
            unaudited_to_bare = rps[NO_AUDIT] / rps["bare proxy"]
            print(f"  {NO_AUDIT} / bare proxy = {unaudited_to_bare:.2f}x   (diagnostic only)")
            floor = rps[ONE_RECORD] / rps["bare proxy"]
            print(f"  {ONE_RECORD} / bare proxy = {floor:.2f}x   (diagnostic only)")
            print(
                f"  gateway CPU over the bare proxy: "
                f"{cpu_us['gateway'] - cpu_us['bare proxy']:+,.0f} µs/request, of which the two "
                f"audit records {cpu_us['gateway'] - cpu_us[NO_AUDIT]:+,.0f} (diagnostic)"
            )
            if any(errors.values()):
                print("  WARNING: some answers were errors; the numbers above are not valid")

            print()
            for direction in ("down", "up"):
                baseline = high_water_mark(gateway.pid)
                started = time.monotonic()
                size = asyncio.run(_transfer(gateway_port, direction))
                seconds = time.monotonic() - started
                delta = high_water_mark(gateway.pid) - baseline
                verdict = "met" if delta <= RSS_TARGET else "NOT met"
                whole = "whole" if size == GIB else f"SHORT ({size} bytes)"
                rate = GIB / seconds / (1 << 20)
                print(
                    f"  1 GiB {direction:<4} through the gateway: {whole}, {rate:,.0f} MiB/s, "
                    f"peak RSS +{delta / (1 << 20):.1f} MiB "
                    f"(target <= {RSS_TARGET >> 20} MiB: {verdict})"
                )
        logged = (work / "gateway.log").read_text(errors="replace").splitlines()
        if logged:
            print(f"\n  the gateway logged {len(logged)} line(s) during the run; the last ones:")
            print("\n".join(f"    {line[:160]}" for line in logged[-5:]))
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
