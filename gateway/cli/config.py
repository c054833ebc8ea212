"""`gateway config check FILE`: validate a gateway config and its policy files, starting nothing.

Every problem is reported at once, each with file and line: the config's own, then those
of the policy files it names (including a route that claims the console host), then the
TLS files when a listener uses TLS (missing, unloadable, or a key others may read),
exactly as `gateway run` would refuse them. Exit 0 when the gateway would start, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.errors import ConfigError, KeyMaterialError
from gateway.policy_store import load_gateway_policies
from gateway.tls import server_context
from policies.errors import PolicyError


def register(commands: argparse._SubParsersAction[Any]) -> None:
    config = commands.add_parser("config", help="gateway configuration")
    sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check", help="validate a config file and its policy files; exit 0 valid, 1 invalid"
    )
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    failed: list[str] = []
    routes = 0
    try:
        routes = len(load_gateway_policies(config.policy_files, config.console_host).routes)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        failed.append(f"policy files: {len(exc.problems)} error(s)")
    if any(listener.tls for listener in config.listeners):
        try:
            # SECURITY: the very check `gateway run` makes: a missing, unloadable or
            # world-readable key is refused here too, never reported "ok".
            server_context(config.tls)
        except KeyMaterialError as exc:
            print(f"{args.file}: tls: {exc}", file=sys.stderr)
            failed.append("TLS files: 1 error(s)")
    if failed:
        print(f"{args.file}: config ok, {', '.join(failed)}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok (console {config.console_url}, {len(config.listeners)} listener(s), "
        f"{routes} route(s) from {len(config.policy_files)} policy file(s))"
    )
    return 0
