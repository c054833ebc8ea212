"""Events that are not workflow transitions but still change what a grant check answers.

Published on the grant channel so every gateway instance drops the org's cached checks
and re-checks its live grants against Redis at once:

    await member_changed(redis, "acme", "bob")   # a member's account changed
    await org_changed(redis, "acme")             # the org's settings changed
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from gateway import keys

MEMBER_CHANGED = "member_changed"
EVERY_MEMBER = "*"


async def member_changed(redis: aioredis.Redis, org: str, member_id: str) -> None:
    """Tell every gateway instance that a member's account changed (drop cached checks)."""
    event = {"event": MEMBER_CHANGED, "org": org, "member": member_id}
    await redis.publish(keys.grant_events_channel(), json.dumps(event))


async def org_changed(redis: aioredis.Redis, org: str) -> None:
    """Tell every gateway instance that what the org allows changed, for all its members."""
    await member_changed(redis, org, EVERY_MEMBER)
