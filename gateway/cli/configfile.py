"""The gateway config as the CLI commands read it: loaded, or every problem on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError


def load_config_or_report(path: Path) -> GatewayConfig | None:
    """The config at `path`; None once each of its problems (file:line) is printed to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
