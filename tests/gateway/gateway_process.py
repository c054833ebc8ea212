"""A gateway process for tests and benchmarks: the real app and server, one test-only stage.

    python -m tests.gateway.gateway_process --data-dir D --redis-url URL --upstream-port P

It serves the real `create_app` application through the real `GatewayServer` (TLS with
the demo CA made under D/tls) and inserts a test stage where the session and grant stages
go, so every flow on the routed host `acme.localhost` acts for a live grant. This is never
part of the gateway package: it exists only so that large transfers and benchmarks can
measure the real forward path in a process of its own. Prints `READY <https port>` once
listening; stops on SIGTERM. `--plain` serves plain HTTP instead (for `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

from gateway.app import STAGES, create_app
from gateway.clock import SystemClock
from gateway.config import GatewayConfig, parse_config
from gateway.flow import Flow
from gateway.identity import ActingGrant, Principal, PrincipalKind
from gateway.pipeline import Stage
from gateway.server import GatewayServer, handler_settings, loop_factory, serve
from gateway.tls import ensure_demo_tls
from policies.model import Scope

HOST = "acme.localhost"
CONSOLE = "gateway.localhost"


class LiveGrantForTest:
    """Test-only stand-in for the session, MFA and grant stages: a live write grant."""

    name = "grant"

    def __init__(self) -> None:
        self.actor = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")

    async def __call__(self, flow: Flow) -> None:
        now = SystemClock().now()
        flow.principal = self.actor
        flow.grant = ActingGrant(
            "g-bench", "acme", "bob", self.actor, Scope.WRITE, now - 60, now + 3600
        )


IDENTITY_STAGES = frozenset({"session", "mfa", "grant"})


def with_live_grant(stages: list[Stage]) -> None:
    """Put the test grant stage in place of the session, MFA and grant stages (in place)."""
    at = next((i for i, s in enumerate(stages) if s.name in IDENTITY_STAGES), 1)
    stages[:] = [s for s in stages if s.name not in IDENTITY_STAGES]
    stages.insert(at, LiveGrantForTest())


def write_config(data_dir: Path, upstream_port: int, *, capture: bool = False) -> GatewayConfig:
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = data_dir / "policy.yaml"
    policy.write_text(
        f"""routes:
  - name: acme
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{upstream_port}
    org: acme
    default: allow
    capture: {{bodies: {"true" if capture else "false"}}}
    timeouts: {{connect_s: 5, read_s: 120}}
    rules: []
""",
        encoding="utf-8",
    )
    text = f"""console_url: https://{CONSOLE}
data_dir: {data_dir}
listeners: [{{address: 127.0.0.1, port: 0, tls: true}}]
tls: {{cert_file: {data_dir}/tls/gateway.crt, key_file: {data_dir}/tls/gateway.key,
       ca_file: {data_dir}/tls/demo-ca.crt}}
policy_files: [{policy}]
"""
    config = parse_config(text, str(data_dir / "gateway.yaml"))
    ensure_demo_tls(config.tls, names=(HOST, CONSOLE, "127.0.0.1"))
    return config


async def serve_plain(config: GatewayConfig, app: web.Application) -> None:
    """The same app and handler settings as the TLS listeners, on plain HTTP."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    runner = web.AppRunner(app, handle_signals=False, **handler_settings(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        print(f"READY {runner.addresses[0][1]}", flush=True)
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument(
        "--plain", action="store_true", help="plain HTTP (for load generators that cannot set SNI)"
    )
    args = parser.parse_args()
    config = write_config(args.data_dir, args.upstream_port)

    def started(server: GatewayServer) -> None:
        print(f"READY {server.bound[0].port}", flush=True)

    async def run() -> None:
        app = create_app(config, redis_url=args.redis_url)
        with_live_grant(app[STAGES])
        if args.plain:
            await serve_plain(config, app)
        else:
            await serve(config, app, on_started=started)

    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
