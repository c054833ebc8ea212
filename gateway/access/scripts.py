"""The access workflow's transition scripts: Lua files run atomically inside Redis.

Each script is `common.lua` + `keys.lua` + its own file, so every transition shares one
definition of the pending-request checks, history entries, events and grant start/end.
Scripts are loaded once per Redis client (`TransitionScripts(redis)`) and called by EVALSHA.
"""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

NAMES = ("file", "approve", "deny", "cancel", "revoke", "sweep", "revoke_all")


def _source(name: str) -> str:
    folder = resources.files("gateway.access") / "lua"
    parts = ["common.lua", "keys.lua", f"{name}.lua"]
    return "\n".join((folder / part).read_text(encoding="utf-8") for part in parts)


class TransitionScripts:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.file = redis.register_script(_source("file"))
        self.approve = redis.register_script(_source("approve"))
        self.deny = redis.register_script(_source("deny"))
        self.cancel = redis.register_script(_source("cancel"))
        self.revoke = redis.register_script(_source("revoke"))
        self.sweep = redis.register_script(_source("sweep"))
        self.revoke_all = redis.register_script(_source("revoke_all"))

    def by_name(self, name: str) -> AsyncScript:
        script: AsyncScript = getattr(self, name)
        return script
