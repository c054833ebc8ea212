"""The gateway config as the CLI commands read it: loaded, or every problem on stderr.

Commands that take `--redis-url` (to reach a Redis other than the config's) take its login
and TLS settings from the config's `redis:` section, never from the command line, which
every local user sees in `ps` and which shell history keeps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config import GatewayConfig, RedisConfig, load_config, redis_url_has_password
from gateway.errors import ConfigError


def load_config_or_report(path: Path) -> GatewayConfig | None:
    """The config at `path`; None once each of its problems (file:line) is printed to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def redis_url_settings(redis_url: str, config_path: Path) -> RedisConfig:
    """Login and TLS settings for a `--redis-url`: those of `config_path` when it exists.

    Raises ValueError when the URL carries a password (it would show in `ps`), ConfigError
    when the config cannot be loaded.
    """
    # SECURITY: a secret on the command line is visible to every local user.
    if redis_url_has_password(redis_url):
        raise ValueError(
            "--redis-url: a URL without a password (the command line shows in `ps`): name "
            "the environment variable holding it in redis.password_env of --config"
        )
    if not config_path.exists():
        return RedisConfig()
    return load_config(config_path).redis
