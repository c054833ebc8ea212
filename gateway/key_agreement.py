"""Key agreement: every gateway instance on one Redis holds the same secret keys.

Instances share one Redis and must share the keys kept outside it: the TOTP encryption
key (else an instance cannot read the TOTP secrets the others stored), the hand-off key
(else a hand-off signed by one instance fails at another) and the audit redaction key
(else the same secret hashes differently across the trail). At start-up, before anything
is written, each instance records in Redis a one-way fingerprint of each key,
HMAC-SHA256(key, "gateway key fingerprint v1:" + name) truncated to 128 bits (never the
key), where none is recorded yet, and compares it with the one recorded; on a mismatch it
refuses to start (`KeyMismatch`), naming the key, where this instance read it from and
what to do, and records nothing. One Lua script compares and records every key at once,
so instances starting together agree on one set of fingerprints.

The assertion signing keys are a set that rotates (`gateway assertion rotate` keeps the
previous keys published), so no single fingerprint fits: the kid (a thumbprint of the
public key) of every key an instance publishes is added to a Redis set, and an instance
whose published keys share no kid with that set is refused: it holds keys of its own (its
own data_dir or GATEWAY_ASSERTION_KEYS), and upstreams fetching another instance's
jwks.json would refuse its assertions. A rotation always shares the keys it keeps.

A deliberate key change: `gateway admin keys forget NAME` removes the recorded
fingerprint (`forget`); the next instance to start records its own.

    await agree_on_keys(redis, shared_keys(config), published_kids(signer))
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import keys
from gateway.accounts import TOTP_KEY_ENV, SecretKeyError
from gateway.accounts.keyfile import secret_key
from gateway.appkeys import ASSERTION_SIGNER, CONFIG, REDIS
from gateway.assertion import ENV_KEYS, AssertionSigner
from gateway.config import GatewayConfig
from gateway.errors import KeyMaterialError, KeyMismatch
from gateway.sessions.handoff import HANDOFF_KEY_ENV, handoff_key

FINGERPRINT_LABEL = b"gateway key fingerprint v1:"
FINGERPRINT_HEX = 32  # 128 bits: enough to tell keys apart, nothing to learn a key from
ASSERTION = "assertion"
KEY_NAMES = ("totp", "handoff", "redaction", ASSERTION)

_FORGET_HINT = "gateway admin keys forget"

# KEYS: fingerprints hash, assertion kid set. ARGV: record ("1" or "0"), n,
# n x (name, fingerprint), kids... Returns {assertion_ok, name, recorded, ...}: the names
# whose recorded fingerprint differs; nothing is written unless every key agrees, nor
# when `record` is "0" (compare only).
_AGREE = """
local n = tonumber(ARGV[2])
local reply = {1}
for i = 0, n - 1 do
  local name, fingerprint = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local recorded = redis.call('HGET', KEYS[1], name)
  if recorded and recorded ~= fingerprint then
    table.insert(reply, name)
    table.insert(reply, recorded)
  end
end
local first_kid = 3 + 2 * n
if #ARGV >= first_kid and redis.call('SCARD', KEYS[2]) > 0 then
  reply[1] = 0
  for i = first_kid, #ARGV do
    if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then
      reply[1] = 1
      break
    end
  end
end
if reply[1] == 0 or #reply > 1 or ARGV[1] ~= '1' then
  return reply
end
for i = 0, n - 1 do
  redis.call('HSETNX', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
for i = first_kid, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
end
return reply
"""


@dataclass(frozen=True)
class SharedKey:
    """One secret key every instance must hold, and where this instance read it from."""

    name: str
    title: str
    key: bytes
    source: str
    remedy: str
    breaks: str

    @property
    def fingerprint(self) -> str:
        digest = hmac.new(self.key, FINGERPRINT_LABEL + self.name.encode(), hashlib.sha256)
        return digest.hexdigest()[:FINGERPRINT_HEX]


# What a deliberate change of each key breaks (said by the refusal and by `forget`).
BREAKS = {
    "totp": "every TOTP secret stored under the old key becomes unreadable: reset each "
    "account with `gateway admin totp reset` and have it enrol again",
    "handoff": "sign-ins under way and hand-offs signed with the old key fail; users sign in again",
    "redaction": "redacted secrets hash differently from then on: the same secret no longer "
    "matches between audit records from before and after the change",
    ASSERTION: "upstreams refuse assertions signed with keys they have not fetched: restart "
    "every instance with the new keys at once, or rotate with `gateway assertion rotate`",
}


def _source(env: str, path: Path) -> str:
    # The readers below take a non-empty variable before the file: so does this.
    return f"environment variable {env}" if os.environ.get(env) else f"file {path}"


def shared_keys(
    config: GatewayConfig, names: Sequence[str] = ("totp", "handoff", "redaction")
) -> tuple[SharedKey, ...]:
    """This instance's shared symmetric keys named `names` (read, and created where
    missing, as the parts using them do). Blocking file I/O: call from a thread."""
    return keys_in(config.data_dir, names)


def keys_in(data_dir: Path, names: Sequence[str]) -> tuple[SharedKey, ...]:
    """The shared symmetric keys `names` as read with `data_dir` (see `shared_keys`)."""
    # Imported here: gateway.app imports this module to hook it into start-up.
    from gateway.app import REDACTION_KEY_ENV, redaction_key

    audit_keys = data_dir / "audit-keys"
    wanted: tuple[tuple[str, str, str, Path, Callable[[], bytes]], ...] = (
        (
            "totp",
            "the TOTP encryption key",
            TOTP_KEY_ENV,
            data_dir / "keys" / "totp.key",
            lambda: secret_key(data_dir, "totp", env=TOTP_KEY_ENV),
        ),
        (
            "handoff",
            "the hand-off key",
            HANDOFF_KEY_ENV,
            data_dir / "keys" / "handoff.key",
            lambda: handoff_key(data_dir),
        ),
        (
            "redaction",
            "the audit redaction key",
            REDACTION_KEY_ENV,
            audit_keys / "redaction.key",
            lambda: redaction_key(audit_keys),
        ),
    )
    found = []
    for name, title, env, path, read in wanted:
        if name not in names:
            continue
        source = _source(env, path)
        try:
            key = read()
        except (SecretKeyError, ValueError, OSError) as exc:
            # SECURITY: a key that cannot be read is refused here, clearly, not at first use.
            raise KeyMaterialError(f"{title} ({source}): {exc}") from exc
        remedy = (
            f"set {env} to the value the other instances use, or unset it and give this "
            f"instance their key file {path.relative_to(data_dir)} under its data_dir "
            "(mode 0600)"
        )
        found.append(SharedKey(name, title, key, source, remedy, BREAKS[name]))
    return tuple(found)


def published_kids(signer: AssertionSigner) -> tuple[str, ...]:
    """The kid of every assertion key the signer publishes (its jwks.json)."""
    return tuple(str(jwk["kid"]) for jwk in signer.jwks()["keys"])


async def agree_on_keys(
    redis: aioredis.Redis,
    shared: Sequence[SharedKey],
    kids: Sequence[str],
    *,
    assertion_source: str = "",
    refused: str = "the gateway did not start",
    record: bool = True,
) -> None:
    """Record the fingerprints not yet recorded (unless `record` is False) and compare
    the rest; KeyMismatch (and nothing recorded, saying `refused`) when any key differs
    from the one the other instances use."""
    args: list[str] = ["1" if record else "0", str(len(shared))]
    for key in shared:
        args += [key.name, key.fingerprint]
    args += list(kids)
    reply: list[Any] = await redis.eval(
        _AGREE, 2, keys.key_fingerprints(), keys.assertion_key_ids(), *args
    )
    assertion_ok = int(reply[0]) == 1
    recorded = {_text(reply[i]): _text(reply[i + 1]) for i in range(1, len(reply), 2)}
    problems = [_mismatch(key, recorded[key.name]) for key in shared if key.name in recorded]
    if not assertion_ok:
        known = sorted(_text(kid) for kid in await redis.smembers(keys.assertion_key_ids()))
        problems.append(_assertion_mismatch(kids, known, assertion_source))
    if problems:
        # SECURITY: an instance with other keys would fail logins and hand-offs and
        # break the redaction hashes of the audit trail: it does not start.
        raise KeyMismatch("\n".join(problems) + f"\nnothing was recorded and {refused}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mismatch(key: SharedKey, recorded: str) -> str:
    return (
        f"{key.title} ({key.source}) is not the key the other gateway instances on this "
        f"Redis use (its fingerprint {key.fingerprint}, recorded {recorded}). "
        f"Give this instance the same key: {key.remedy}. If the key was changed on "
        f"purpose, run `{_FORGET_HINT} {key.name}` once and start again; beware: "
        f"{key.breaks}."
    )


def _assertion_mismatch(kids: Sequence[str], known: Sequence[str], source: str) -> str:
    return (
        f"the assertion signing keys ({source}) share no key with those the other gateway "
        f"instances on this Redis published (this instance's kids {', '.join(kids)}; "
        f"recorded {', '.join(known)}): upstreams would refuse its assertions. Give every "
        f"instance the same keys: the same {ENV_KEYS}, or the same keys/*.pem files under "
        f"data_dir (`gateway assertion rotate` rotates them without this refusal). If every "
        f"key was replaced on purpose, run `{_FORGET_HINT} {ASSERTION}` once and start "
        f"again; beware: {BREAKS[ASSERTION]}."
    )


def assertion_source(config: GatewayConfig) -> str:
    """Where this instance's assertion keys come from (as `load_signer` decides)."""
    if os.environ.get(ENV_KEYS):
        return f"environment variable {ENV_KEYS}"
    return f"directory {config.data_dir / 'keys'}"


async def forget(redis: aioredis.Redis, name: str) -> bool:
    """Remove the recorded fingerprint of key `name` (one of KEY_NAMES); whether one was."""
    if name not in KEY_NAMES:
        raise ValueError(f"no shared key named {name!r}; one of {', '.join(KEY_NAMES)}")
    if name == ASSERTION:
        return bool(await redis.delete(keys.assertion_key_ids()))
    return bool(await redis.hdel(keys.key_fingerprints(), name))


async def key_agreement_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start-up: refuse to serve with keys other than the other instances' (cleanup_ctx)."""
    config = app[CONFIG]
    shared = await asyncio.to_thread(shared_keys, config)
    try:
        await agree_on_keys(
            app[REDIS],
            shared,
            published_kids(app[ASSERTION_SIGNER]),
            assertion_source=assertion_source(config),
        )
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        # SECURITY: keys never compared are never trusted: no start (fail closed), even if
        # Redis would answer the next step.
        raise KeyMismatch(
            f"Redis unreachable ({exc}): this instance's shared keys could not be compared "
            "with the other instances'; not started"
        ) from exc
    except (RedisError, IndexError, TypeError, ValueError) as exc:
        # SECURITY: an error reply, or a reply of another shape, is no agreement either.
        raise KeyMismatch(
            f"Redis refused the comparison of this instance's shared keys with the other "
            f"instances' ({type(exc).__name__}: {exc}); not started"
        ) from exc
    yield
