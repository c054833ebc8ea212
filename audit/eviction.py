"""Whether a Redis may evict keys: the audit stream must live in one that never does.

A Redis whose `maxmemory-policy` is anything but `noeviction` deletes keys when it runs out
of memory: audit frames not yet collected (and, for the gateway, grants and sessions)
would vanish without a trace. The gateway and `collect` ask at start, and refuse such a
Redis (the gateway's readiness probe asks again later: a failover may change it); a Redis
that does not let them ask (an ACL user without CONFIG, a renamed command) gets a warning,
since its operator may have set it right.

    refusal = await eviction_refusal(client)   # None: noeviction, or not allowed to ask
    if refusal is not None:
        raise SystemExit(refusal)
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

SETTING = "maxmemory-policy"
REQUIRED = "noeviction"


async def eviction_refusal(client: aioredis.Redis) -> str | None:
    """Why `client`'s Redis must not be used (it may evict keys), or None.

    None too when Redis does not let the caller read the setting (logged as a warning).
    Connection errors propagate: the caller decides how an unreachable Redis is handled.
    """
    try:
        reply = await client.config_get(SETTING)
    except ResponseError as exc:  # NOPERM (ACL), or CONFIG renamed away: "unknown command"
        log.warning(
            "cannot read the Redis setting %s (%s); make sure it is %s, or keys such as "
            "the audit stream may be evicted",
            SETTING,
            exc,
            REQUIRED,
        )
        return None
    found = _text(reply.get(SETTING))
    if found is None:
        log.warning("Redis did not report its %s; make sure it is %s", SETTING, REQUIRED)
        return None
    if found != REQUIRED:
        # SECURITY: an evicting Redis could silently drop audit frames, grants or sessions.
        return (
            f"Redis has {SETTING} {found!r}: it may evict keys (audit frames, grants, "
            f"sessions) when memory runs out; set {SETTING} {REQUIRED} on that Redis"
        )
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
