"""`gateway config check FILE`: validate a gateway config without starting anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.errors import ConfigError


def register(commands: argparse._SubParsersAction[Any]) -> None:
    config = commands.add_parser("config", help="gateway configuration")
    sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate a config file; exit 0 valid, 1 invalid")
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
    print(f"{args.file}: ok (console {config.console_url}, {len(config.listeners)} listener(s))")
    return 0
