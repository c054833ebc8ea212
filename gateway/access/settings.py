"""An org's access-workflow settings: limits on requests, approvals needed, justification rule.

Stored as JSON in the org's hash (field `settings` of `keys.org(org)`, as the directory
import writes it); a missing name takes its default, so an org imported without settings
works at once. Stored values are validated on every load: broken ones refuse (fail closed).
`OrgSettings.merged` validates an update (every problem reported at once) and applies it.
A ticket pattern must be safe to run (`ticket_pattern_problem`: no backreferences, no
nested quantifiers, a bounded amount of backtracking) and is searched only in the first
MAX_TICKET_SCAN characters of a justification.

    {"max_duration_s": 14400, "pending_lapse_s": 43200, "approvals_required": 1,
     "justification_min_length": 10, "ticket_pattern": "^[A-Z]+-[0-9]+",
     "admins_impersonable": false}
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import redis.asyncio as aioredis

from gateway import keys
from gateway.access.errors import AccessInvalid, AccessNotFound
from gateway.access.events import org_changed, publish_lua
from gateway.access.text import as_text

MAX_TICKET_PATTERN = 200  # long patterns invite catastrophic backtracking; keep them short
MAX_JUSTIFICATION = 2000
# The ticket pattern sees only this much of the justification: with the work bound below,
# no accepted pattern can backtrack for long on any justification.
MAX_TICKET_SCAN = 200
# Upper bound of backtracking paths (see `_work`) a ticket pattern may have on
# MAX_TICKET_SCAN characters: about 20 ms of matching at worst.
MAX_TICKET_WORK = 10_000_000

# The standard library's own regex parser (private, but the only exact reading of Python's
# regex syntax); imported by name so that its missing type stubs stay contained here.
_regex_parser: Any = importlib.import_module("re._parser")


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
        """The compiled ticket pattern; search it only in `text[:MAX_TICKET_SCAN]`."""
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
    unsafe = ticket_pattern_problem(value)
    if unsafe is not None:
        problems.append(f"{name}: {value!r} {unsafe}")
        return _BAD
    return value


def ticket_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` could backtrack catastrophically, or None if it is safe to run.

    Refused: backreferences (and groups matched conditionally on one), a quantifier inside
    a quantified part (`(a+)+`), alternatives inside a quantified part (`(a|ab)*`), and
    patterns whose bound on backtracking paths over MAX_TICKET_SCAN characters exceeds
    MAX_TICKET_WORK (several long quantifiers in one pattern).
    """
    # SECURITY: org admins write these patterns and every request filing runs one on the
    # event loop; a pattern that can backtrack for seconds would stall the gateway.
    try:
        parsed = _regex_parser.parse(pattern)
        work = MAX_TICKET_SCAN * _work(parsed.data, repeated=False)
    except _UnsafePattern as exc:
        return str(exc)
    except (re.error, RecursionError):
        return "is not a regular expression the gateway can check"
    if work > MAX_TICKET_WORK:
        return "has too many long quantifiers (it could backtrack for a long time)"
    return None


class _UnsafePattern(Exception):
    pass


def _work(items: Any, *, repeated: bool) -> int:
    """An upper bound of the ways `items` can match one stretch of text (1 if no choice)."""
    total = 1
    for op, arg in items:
        kind = str(op)
        if kind in ("GROUPREF", "GROUPREF_EXISTS", "GROUPREF_IGNORE"):
            raise _UnsafePattern("uses a backreference (refused: it can backtrack without bound)")
        if kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = arg
            if high <= 1:
                total *= 2 * _work(body, repeated=repeated)
                continue
            if repeated:
                raise _UnsafePattern(
                    "nests a quantifier inside a quantified part (refused: like (a+)+ it can "
                    "backtrack exponentially)"
                )
            total *= (min(high, MAX_TICKET_SCAN) - low + 1) * _work(body, repeated=True)
        elif kind == "BRANCH":
            if repeated:
                raise _UnsafePattern(
                    "repeats a part with alternatives (refused: like (a|ab)* it can "
                    "backtrack exponentially)"
                )
            total *= sum(_work(branch.data, repeated=False) for branch in arg[1])
        elif kind == "SUBPATTERN":
            total *= _work(arg[-1].data, repeated=repeated)
        elif kind in ("ASSERT", "ASSERT_NOT"):
            total *= _work(arg[1].data, repeated=repeated)
        elif kind == "ATOMIC_GROUP":
            total *= _work(arg.data, repeated=repeated)
    return total


# KEYS: org hash. ARGV: settings JSON, then the org_changed event's channel and message.
_SAVE = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'settings', ARGV[1])
"""
    + publish_lua(2)
    + """
return 1
"""
)


async def load_settings(redis: aioredis.Redis, org: str) -> OrgSettings:
    """The org's settings; stored values are validated again (bad ones refuse, fail closed)."""
    return settings_from(await redis.hget(keys.org(org), "settings"), org)


def settings_from(raw: bytes | str | None, org: str) -> OrgSettings:
    """Settings from their stored JSON; AccessInvalid when the stored value breaks a rule."""
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
    """Store `settings` for `org`; AccessInvalid (nothing stored) if any value breaks a rule.

    Checked here too, not only in `merged`: an `OrgSettings` built directly is unchecked.
    """
    checked = OrgSettings().merged(settings.to_json())
    text = json.dumps(checked.to_json(), sort_keys=True)
    # SECURITY: cached grant checks judged the old settings (e.g. whether admins may be
    # acted as); the event goes out in the write's own script, or neither happens.
    saved = await redis.eval(_SAVE, 1, keys.org(org), text, *org_changed(org))
    if not saved:
        raise AccessNotFound("no_such_org", f"no org {org!r}")
