"""`gateway audit verify|replay|export|collect|keys`: the auditor's commands.

The logic lives in `audit.cli` (it runs without the gateway as `python -m audit`); this
module only supplies the gateway's layout, read from the gateway config (`--config FILE`,
default config/gateway.yaml): the stream key from `gateway.keys`, the segment directory
(`audit.segment_dir`), the key directory and its public keyring under `data_dir`, and the
Redis URL (`redis.url` with its username, `password_env`, `ca_file` and mutual-TLS
`client_cert_file`/`client_key_file`, or the embedded server's socket under `data_dir`,
passed as the gateway itself connects). Flags given on the command line win; the config is
read only when a command needs something from it.

    gateway audit collect --once --config /etc/gateway/gateway.yaml
    gateway audit verify                 # segments and keyring of config/gateway.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from audit.cli import Defaults, add_commands
from audit.errors import LayoutError
from gateway import keys
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError

DEFAULT_CONFIG = Path("config/gateway.yaml")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    audit = commands.add_parser("audit", help="verify, replay and export the audit trail")
    add_commands(
        audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION"),
        Defaults(stream=keys.audit_stream(), checkpoint_key=keys.audit_last_checkpoint()),
        layout=GatewayLayout(),
    )


def audit_defaults(config: GatewayConfig) -> Defaults:
    """Where the gateway running with `config` keeps its audit trail and keys."""
    key_dir = config.data_dir / "audit-keys"
    embedded = (config.data_dir / "redis" / "redis.sock").resolve()
    return Defaults(
        stream=keys.audit_stream(),
        segment_dir=config.audit.segment_dir,
        key_dir=key_dir,
        # A Sentinel deployment names no URL here: give the master's with --redis-url.
        redis_url=config.redis.url or (None if config.redis.external else f"unix://{embedded}"),
        keyring=key_dir / "keyring.json",
        redis_username=config.redis.username,
        redis_password_env=config.redis.password_env,
        redis_ca_file=config.redis.ca_file,
        redis_client_cert_file=config.redis.client_cert_file,
        redis_client_key_file=config.redis.client_key_file,
        checkpoint_key=keys.audit_last_checkpoint(),
    )


class GatewayLayout:
    """The gateway config as the audit commands' layout (`audit.cli.Layout`)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"the gateway config naming the data directory (default {DEFAULT_CONFIG})",
        )

    def defaults(self, args: argparse.Namespace) -> Defaults:
        path: Path = args.config
        try:
            config = load_config(path)
        except ConfigError as exc:
            problems = "\n".join(str(p) for p in exc.problems)
            raise LayoutError(
                f"cannot read the gateway config {path} (name it with --config, or give the "
                f"locations as flags):\n{problems}"
            ) from exc
        return audit_defaults(config)
