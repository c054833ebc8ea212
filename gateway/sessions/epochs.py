"""Session epochs: one counter per account that each of its logged-in sessions is made under.

    gw:session-epoch:<principal>   integer; absent means 0; only ever raised (INCR), no TTL

Ending every session of an account (disabling it, resetting its password or TOTP,
`gateway admin sessions end`) raises the counter in the same Lua script that deletes the
sessions (`ending.end_sessions_of`). A login reads the counter together with the account
(one MULTI), before it checks any credential, and its new session is saved only if the
counter has not moved since (`records.create_login_record`, one Lua script). Every
logged-in session record carries the epoch it was made under (`epoch`), and a session
whose epoch is not its account's current one is refused wherever it is used, whatever
path wrote it. So a login racing the end of all sessions either fails or is ended too.
"""

from __future__ import annotations

from typing import Any

# Lua, shared by the scripts that read a session: the epoch of the principal a record
# names (ARGV[1] is the epoch key prefix), or '' when the name is no principal key.
# The principal comes from a record the gateway wrote; the shape check keeps a damaged
# one from naming anything but an epoch key.
EPOCH_OF_LUA = """
local function epoch_of(principal)
  if type(principal) ~= 'string' or #principal > 160
      or not string.match(principal, '^[A-Za-z0-9:._%-]+$') then
    -- SECURITY: '' is a damaged counter (dead session); false would reach the gateway
    -- as nil, which reads as an absent counter, i.e. epoch 0.
    return ''
  end
  return redis.call('GET', ARGV[1] .. principal) or '0'
end
"""

MAX_EPOCH_TEXT = 20  # digits of a signed 64-bit integer (INCR's range)


def epoch_value(raw: object) -> int | None:
    """The stored counter as an int (absent = 0), or None when it is damaged."""
    if raw is None:
        return 0
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if (
        not isinstance(text, str)
        or not text.isascii()
        or not text.isdigit()
        or len(text) > MAX_EPOCH_TEXT
    ):
        return None
    return int(text)


def made_under_current_epoch(record: dict[str, Any], current: object) -> bool:
    """Whether a logged-in session record was made under its account's current epoch."""
    made_under = record.get("epoch")
    now_at = epoch_value(current)
    if isinstance(made_under, bool) or not isinstance(made_under, int) or now_at is None:
        return False  # SECURITY: no epoch, or a damaged one, is a dead session (fail closed)
    # SECURITY: every session of the account was ended since this one was made.
    return made_under == now_at
