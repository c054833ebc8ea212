"""`gateway config check FILE`: validate a gateway config and its policy files, starting nothing.

Every problem is reported at once, each with file and line: the config's own, then those
of the policy files it names (including a route that claims the console host), exactly as
`gateway run` would refuse them. Exit 0 when the gateway would start, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy_store import load_gateway_policies
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
    try:
        policies = load_gateway_policies(config.policy_files, config.console_host)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(
            f"{args.file}: config ok, policy files: {len(exc.problems)} error(s)", file=sys.stderr
        )
        return 1
    print(
        f"{args.file}: ok (console {config.console_url}, {len(config.listeners)} listener(s), "
        f"{len(policies.routes)} route(s) from {len(config.policy_files)} policy file(s))"
    )
    return 0
