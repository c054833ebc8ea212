"""Load generation: wrk when installed (Debian's `wrk`), else a Python generator.

    result = generate_load(url, host="acme.localhost", connections=32, duration_s=8)
    result.rps, result.errors, result.tool

The Python generator runs in its own process (`python -m bench.load URL ...`) so it does
not share an event loop with anything it measures; it keeps `connections` keep-alive
connections busy for `duration_s` and counts answers. It is slower than wrk, so with it
the ratios say more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp

from gateway.server import loop_factory


@dataclass(frozen=True)
class LoadResult:
    tool: str
    requests: int
    errors: int  # non-2xx answers and failed requests
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def which_tool() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def _wrk(url: str, host: str, connections: int, duration_s: float) -> LoadResult:
    threads = max(1, min(2, connections))
    completed = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "-H",
            f"Host: {host}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
    )
    out = completed.stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    seconds = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    error_count = int(bad.group(1)) if bad else 0
    if errors:
        error_count += sum(int(n) for n in errors.groups())
    return LoadResult("wrk", int(total.group(1)), error_count, seconds)


async def _python_load(url: str, host: str, connections: int, duration_s: float) -> LoadResult:
    done = 0
    errors = 0
    deadline = time.monotonic() + duration_s
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    async with client.get(url, headers={"Host": host}) as response:
                        await response.read()
                        if response.status >= 300:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.monotonic() - started
    return LoadResult("python", done, errors, seconds)


def _python(url: str, host: str, connections: int, duration_s: float) -> LoadResult:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load",
            url,
            "--host",
            host,
            "--connections",
            str(connections),
            "--duration",
            str(duration_s),
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
    )
    data = json.loads(completed.stdout)
    return LoadResult("python", data["requests"], data["errors"], data["seconds"])


def generate_load(url: str, *, host: str, connections: int, duration_s: float) -> LoadResult:
    if which_tool() == "wrk":
        return _wrk(url, host, connections, duration_s)
    return _python(url, host, connections, duration_s)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("url")
    parser.add_argument("--host", required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(_python_load(args.url, args.host, args.connections, args.duration))
    print(
        json.dumps(
            {"requests": result.requests, "errors": result.errors, "seconds": result.seconds}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
