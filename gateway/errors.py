"""The gateway's exception types.

GatewayError
 ├── ConfigError       configuration could not be loaded; carries every problem at once
 ├── RedisStartError   the embedded redis-server could not be started
 ├── RedisLoginError   the configured Redis refused the gateway's username or password
 ├── RedisSettingError the configured Redis may lose data: its maxmemory-policy evicts keys
 ├── KeyMaterialError  a key or certificate is missing, unreadable, invalid or not 0600
 ├── KeyMismatch       this instance's secret keys differ from those of the others on its Redis
 │                     (or could not be compared with them: Redis unreachable at start)
 └── AssertionRefused  no identity assertion may be signed for this grant (e.g. it has ended)
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.source import Problem


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RedisStartError(GatewayError):
    pass


class RedisLoginError(GatewayError):
    pass


class RedisSettingError(GatewayError):
    pass


class KeyMaterialError(GatewayError):
    pass


class KeyMismatch(GatewayError):
    pass


class AssertionRefused(GatewayError):
    pass
