"""`gateway …`: one argparse tree; each subcommand module exposes `register(commands)`.

Commands are listed explicitly in COMMANDS (no discovery magic). A handler returns the
process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

Handler = Callable[[argparse.Namespace], int]

# Each name is a module gateway.cli.<name> with `register(commands) -> None`.
COMMANDS: tuple[str, ...] = (
    "config",
    "admin",
    "policy",
    "run",
    "demo",
    "audit",
    "login",
    "request",
    "mail",
    "assertion",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="The impersonation gateway.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        import_module(f"gateway.cli.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
