"""`gateway run --config FILE`: serve the gateway until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from audit.errors import AuditError
from gateway.cli.configfile import load_config_or_report
from gateway.errors import GatewayError
from gateway.server import GatewayServer, loop_factory, run
from policies.errors import PolicyError


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("run", help="serve the gateway (stops on SIGTERM/SIGINT)")
    parser.add_argument(
        "--config", type=Path, default=Path("config/gateway.yaml"), help="gateway config file"
    )
    parser.set_defaults(handler=_run)


def _announce(server: GatewayServer) -> None:
    for bound in server.bound:
        role = "gateway" if bound.tls else "redirect to https"
        print(f"listening on {bound.url} ({role})", flush=True)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config_or_report(args.config)
    if config is None:
        return 1
    print(f"event loop: {loop_factory()[1]}", flush=True)
    try:
        run(config, on_started=_announce)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"gateway: {len(exc.problems)} policy error(s); not started", file=sys.stderr)
        return 1
    except (GatewayError, AuditError, RedisError, OSError) as exc:
        # Start-up refusals (bad material, Redis or the audit stream unreachable): said
        # plainly, not as a traceback; nothing was served.
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0
