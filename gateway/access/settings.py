"""An org's access-workflow settings: limits on requests, approvals needed, justification rule.

Stored as JSON in the org's hash (field `settings` of `keys.org(org)`, as the directory
import writes it); a missing name takes its default, so an org imported without settings
works at once. Stored values are validated on every load: broken ones refuse (fail closed).
`OrgSettings.merged` validates an update (every problem reported at once) and applies it.

    {"max_duration_s": 14400, "pending_lapse_s": 43200, "approvals_required": 1,
     "justification_min_length": 10, "ticket_pattern": "^[A-Z]+-[0-9]+",
     "admins_impersonable": false}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.errors import AccessInvalid, AccessNotFound
from gateway.access.text import as_text

MAX_TICKET_PATTERN = 200  # long patterns invite catastrophic backtracking; keep them short
MAX_JUSTIFICATION = 2000


@dataclass(frozen=True)
class OrgSettings:
    max_duration_s: int = 4 * 3600
    pending_lapse_s: int = 12 * 3600
    approvals_required: int = 1
    justification_min_length: int = 10
    ticket_pattern: str | None = None  # a justification must contain a match (re.search)
    admins_impersonable: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def merged(self, update: Mapping[str, Any]) -> OrgSettings:
        """These settings with `update` applied; raises AccessInvalid naming every bad field."""
        problems: list[str] = []
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in update.items():
            if name not in known:
                problems.append(f"{name}: no such setting; known: {', '.join(known)}")
                continue
            checked = _check(name, value, problems)
            if checked is not _BAD:
                changes[name] = checked
        if problems:
            raise AccessInvalid("invalid_settings", "; ".join(problems))
        return replace(self, **changes)

    def ticket_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.ticket_pattern) if self.ticket_pattern else None


_BAD = object()

_INT_RANGES = {
    "max_duration_s": (60, 30 * 86400),
    "pending_lapse_s": (60, 30 * 86400),
    "approvals_required": (1, 20),
    "justification_min_length": (0, 500),
}


def _check(name: str, value: object, problems: list[str]) -> Any:
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name}: {value!r} is not an integer from {low} to {high}")
            return _BAD
        return value
    if name == "admins_impersonable":
        if not isinstance(value, bool):
            problems.append(f"{name}: {value!r} is not true or false")
            return _BAD
        return value
    # ticket_pattern
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TICKET_PATTERN:
        problems.append(f"{name}: expected a regular expression of at most {MAX_TICKET_PATTERN}")
        return _BAD
    try:
        re.compile(value)
    except re.error as exc:
        problems.append(f"{name}: {value!r} is not a regular expression ({exc})")
        return _BAD
    return value


_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'settings', ARGV[1])
return 1
"""


async def load_settings(redis: aioredis.Redis, org: str) -> OrgSettings:
    """The org's settings; stored values are validated again (bad ones refuse, fail closed)."""
    raw = await redis.hget(keys.org(org), "settings")
    if not raw:
        return OrgSettings()
    try:
        stored = json.loads(as_text(raw))
    except ValueError as exc:
        raise AccessInvalid("invalid_settings", f"{org}: stored settings are not JSON") from exc
    if not isinstance(stored, dict):
        raise AccessInvalid("invalid_settings", f"{org}: stored settings are not a mapping")
    return OrgSettings().merged(stored)


async def save_settings(redis: aioredis.Redis, org: str, settings: OrgSettings) -> None:
    text = json.dumps(settings.to_json(), sort_keys=True)
    saved = await redis.eval(_SAVE, 1, keys.org(org), text)
    if not saved:
        raise AccessNotFound("no_such_org", f"no org {org!r}")
