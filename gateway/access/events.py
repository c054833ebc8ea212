"""Events that are not workflow transitions but still change what a grant check answers.

Published on the grant channel (`keys.grant_events_channel()`) so that every gateway
instance drops the org's cached checks and re-checks its live grants against Redis at
once. Each is published by the same Lua script that makes the change, after its writes:
a process that dies half-way can never leave a change that no instance heard of (nor an
event for a change that did not happen: a script that fails stops before its PUBLISH).
A script takes the channel and the message as arguments, an empty channel meaning
"publish nothing":

    SCRIPT = f"redis.call('HSET', KEYS[1], 'disabled', '1') {publish_lua(1)}"
    channel, message = member_changed("acme", "bob")   # a member's account changed
    channel, message = org_changed("acme")             # the org's settings changed
    await redis.eval(SCRIPT, 1, account_key, channel, message)
"""

from __future__ import annotations

import json

from gateway import keys

MEMBER_CHANGED = "member_changed"
EVERY_MEMBER = "*"
# The channel/message pair of a script that has nothing to tell.
NO_EVENT = ("", "")


def member_changed(org: str, member_id: str) -> tuple[str, str]:
    """(channel, message) telling every instance that a member's account changed."""
    event = {"event": MEMBER_CHANGED, "org": org, "member": member_id}
    return keys.grant_events_channel(), json.dumps(event)


def org_changed(org: str) -> tuple[str, str]:
    """(channel, message) telling every instance that what the org allows changed."""
    return member_changed(org, EVERY_MEMBER)


def publish_lua(channel_arg: int) -> str:
    """The Lua line publishing the pair passed as ARGV[channel_arg] and the one after it."""
    i, j = channel_arg, channel_arg + 1
    return f"if ARGV[{i}] ~= '' then redis.call('PUBLISH', ARGV[{i}], ARGV[{j}]) end"
