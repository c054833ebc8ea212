"""Instances on one Redis must hold the same secret keys: one that does not is refused at
start-up, clearly, and changes nothing; `gateway admin keys forget NAME` lets a key change.

Every gateway here is a real app started on loopback against the real test Redis; the
keys come from their real sources (environment variables, files under data_dir).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.errors import AuditUnavailable
from gateway import keys
from gateway.accounts import TOTP_KEY_ENV
from gateway.app import REDACTION_KEY_ENV, create_app
from gateway.assertion import ENV_KEYS, load_signer
from gateway.cli import main
from gateway.config import GatewayConfig, parse_config
from gateway.errors import KeyMaterialError, KeyMismatch
from gateway.key_agreement import (
    FINGERPRINT_LABEL,
    SharedKey,
    agree_on_keys,
    forget,
    shared_keys,
)
from gateway.sessions.handoff import HANDOFF_KEY_ENV
from tests.gateway.proxyharness import GatewayTestServer
from tests.gateway.test_server_process import GATEWAY, _write_config

CONSOLE = "gateway.localhost"
ENVS = {
    "totp": TOTP_KEY_ENV,
    "handoff": HANDOFF_KEY_ENV,
    "redaction": REDACTION_KEY_ENV,
}
TITLES = {
    "totp": "the TOTP encryption key",
    "handoff": "the hand-off key",
    "redaction": "the audit redaction key",
}


def _new_key(name: str) -> str:
    if name == "redaction":
        return secrets.token_hex(32)
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def config_file(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / f"{data_dir.name}.yaml"
    policy = tmp_path / "policy.yaml"
    policy.write_text("routes: []\n")
    path.write_text(
        f"""console_url: https://{CONSOLE}:8443
data_dir: {data_dir}
listeners: [{{address: 127.0.0.1, port: 8443}}]
policy_files: [{policy}]
"""
    )
    return path


def config_for(tmp_path: Path, data_dir: Path) -> GatewayConfig:
    path = config_file(tmp_path, data_dir)
    return parse_config(path.read_text(), str(path))


@pytest.fixture
def config_a(tmp_path: Path, shared_env: dict[str, str]) -> GatewayConfig:
    """One instance's config (data directory `a`), the shared keys in its environment."""
    return config_for(tmp_path, tmp_path / "a")


def run_gateway(project_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS…` as a process of its own (bounded: a hung start fails the test)."""
    return subprocess.run(
        [GATEWAY, *args],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.asynccontextmanager
async def started(config: GatewayConfig, redis_url: str) -> AsyncIterator[GatewayTestServer]:
    server = GatewayTestServer(create_app(config, redis_url=redis_url), host="127.0.0.1")
    try:
        await server.start_server()
        yield server
    finally:
        await server.close()


async def start_fails(config: GatewayConfig, redis_url: str) -> BaseException:
    server = GatewayTestServer(create_app(config, redis_url=redis_url), host="127.0.0.1")
    try:
        with pytest.raises((KeyMismatch, KeyMaterialError, AuditUnavailable)) as caught:
            await server.start_server()
    finally:
        await server.close()
    return caught.value


async def refused(config: GatewayConfig, redis_url: str) -> str:
    error = await start_fails(config, redis_url)
    assert isinstance(error, KeyMismatch), repr(error)
    return str(error)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def snapshot(redis: aioredis.Redis) -> dict[str, object]:
    return {_text(key): await redis.dump(key) for key in sorted(await redis.keys("*"))}


async def fingerprints(redis: aioredis.Redis) -> dict[str, str]:
    raw = await redis.hgetall(keys.key_fingerprints())
    return {_text(k): _text(v) for k, v in raw.items()}


def _clear_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (*ENVS.values(), ENV_KEYS):
        monkeypatch.delenv(env, raising=False)


@pytest.fixture
def shared_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every key from the environment: instances with different data_dirs share them."""
    values = {name: _new_key(name) for name in ENVS}
    for name, env in ENVS.items():
        monkeypatch.setenv(env, values[name])
    monkeypatch.setenv(ENV_KEYS, _pem())
    return values


async def admin(config: Path, redis_url: str, *args: str) -> int:
    # The CLI runs its own event loop: in a thread of its own, as from a shell.
    argv = ["admin", "--config", str(config), "--redis-url", redis_url, *args]
    return await asyncio.to_thread(main, argv)


async def test_instances_with_the_same_keys_start_and_record_only_fingerprints(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, shared_env: dict[str, str]
) -> None:
    first, second = config_for(tmp_path, tmp_path / "a"), config_for(tmp_path, tmp_path / "b")
    async with started(first, redis_url), started(second, redis_url):
        recorded = await fingerprints(redis)
    key_bytes = {
        "totp": base64.urlsafe_b64decode(shared_env["totp"]),
        "handoff": base64.urlsafe_b64decode(shared_env["handoff"]),
        "redaction": bytes.fromhex(shared_env["redaction"]),
    }
    expected = {
        name: hmac.new(key, FINGERPRINT_LABEL + name.encode(), hashlib.sha256).hexdigest()[:32]
        for name, key in key_bytes.items()
    }
    assert recorded == expected
    for name, key in key_bytes.items():  # one-way: no form of the key is stored
        assert key.hex() not in recorded[name]
        assert shared_env[name] not in recorded[name]
    kids = {_text(k) for k in await redis.smembers(keys.assertion_key_ids())}
    signer = load_signer(tmp_path / "unused", issuer="https://x", environ=dict(os.environ))
    assert kids == {jwk["kid"] for jwk in signer.jwks()["keys"]}


@pytest.mark.parametrize("name", sorted(ENVS))
async def test_an_instance_with_another_key_is_refused_and_changes_nothing_until_forgotten(
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    shared_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    first, second = config_for(tmp_path, tmp_path / "a"), config_for(tmp_path, tmp_path / "b")
    async with started(first, redis_url):
        pass
    before = await snapshot(redis)
    monkeypatch.setenv(ENVS[name], _new_key(name))

    message = await refused(second, redis_url)
    assert f"{TITLES[name]} (environment variable {ENVS[name]})" in message
    assert f"gateway admin keys forget {name}" in message
    assert [t for t in TITLES.values() if t in message] == [TITLES[name]]
    assert "assertion" not in message
    assert await snapshot(redis) == before  # nothing recorded, no audit frame written

    assert (
        await admin(config_file(tmp_path, tmp_path / "b"), redis_url, "keys", "forget", name) == 0
    )
    out = capsys.readouterr()
    assert f"forgot the recorded fingerprint of the {name} key" in out.out
    assert "warning:" in out.err
    async with started(second, redis_url):
        pass
    monkeypatch.setenv(ENVS[name], shared_env[name])  # the old key is now the odd one out
    assert TITLES[name] in await refused(first, redis_url)


async def test_an_instance_with_its_own_data_dir_is_refused_naming_every_file(
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_key_env(monkeypatch)
    async with started(config_for(tmp_path, tmp_path / "a"), redis_url):
        pass
    before = await snapshot(redis)
    own = tmp_path / "b"
    message = await refused(config_for(tmp_path, own), redis_url)
    assert f"the TOTP encryption key (file {own / 'keys' / 'totp.key'})" in message
    assert f"the hand-off key (file {own / 'keys' / 'handoff.key'})" in message
    assert f"the audit redaction key (file {own / 'audit-keys' / 'redaction.key'})" in message
    assert f"the assertion signing keys (directory {own / 'keys'})" in message
    assert "nothing was recorded and the gateway did not start" in message
    assert await snapshot(redis) == before


async def test_instances_sharing_a_data_dir_starting_at_once_all_start(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_key_env(monkeypatch)
    config = config_for(tmp_path, tmp_path / "shared")
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(
            *(stack.enter_async_context(started(config, redis_url)) for _ in "abc")
        )
        assert set(await fingerprints(redis)) == {"totp", "handoff", "redaction"}
        assert await redis.scard(keys.assertion_key_ids()) == 1


async def test_first_starts_at_once_with_different_keys_agree_on_one(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_key_env(monkeypatch)
    configs = [config_for(tmp_path, tmp_path / f"own-{i}") for i in range(3)]
    servers = [GatewayTestServer(create_app(c, redis_url=redis_url)) for c in configs]
    try:
        outcomes = await asyncio.gather(
            *(server.start_server() for server in servers), return_exceptions=True
        )
        winners = [i for i, outcome in enumerate(outcomes) if outcome is None]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, KeyMismatch) for o in outcomes if o is not None)
        won = shared_keys(configs[winners[0]])
        assert await fingerprints(redis) == {key.name: key.fingerprint for key in won}
    finally:
        for server in servers:
            await server.close()


async def test_concurrent_agreements_record_one_key_each(redis: aioredis.Redis) -> None:
    async def attempt(i: int) -> bool:
        key = SharedKey("totp", "the TOTP encryption key", secrets.token_bytes(32), f"k{i}", "", "")
        try:
            await agree_on_keys(redis, [key], [f"kid-{i}"])
        except KeyMismatch:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert results.count(True) == 1
    assert await redis.hlen(keys.key_fingerprints()) == 1
    assert await redis.smembers(keys.assertion_key_ids()) == {f"kid-{results.index(True)}".encode()}


async def test_a_rotated_assertion_key_set_starts_a_foreign_one_is_refused(
    redis: aioredis.Redis, redis_url: str, config_a: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, foreign = _pem(), _pem(), _pem()
    monkeypatch.setenv(ENV_KEYS, old)
    async with started(config_a, redis_url):
        pass
    monkeypatch.setenv(ENV_KEYS, old + new)  # rotated: the old key still published
    async with started(config_a, redis_url):
        pass
    monkeypatch.setenv(ENV_KEYS, new)  # the oldest pruned later: still shares `new`
    async with started(config_a, redis_url):
        pass
    before = await snapshot(redis)
    monkeypatch.setenv(ENV_KEYS, foreign)
    message = await refused(config_a, redis_url)
    assert f"the assertion signing keys (environment variable {ENV_KEYS})" in message
    assert "gateway admin keys forget assertion" in message
    assert await snapshot(redis) == before
    assert await forget(redis, "assertion") is True
    async with started(config_a, redis_url):
        pass
    assert await redis.scard(keys.assertion_key_ids()) == 1


async def test_unreadable_key_material_is_refused_naming_it_and_records_nothing(
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    shared_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_for(tmp_path, tmp_path / "a")
    monkeypatch.setenv(TOTP_KEY_ENV, "not base64 !!")
    error = await start_fails(config, redis_url)
    assert isinstance(error, KeyMaterialError)
    assert f"the TOTP encryption key (environment variable {TOTP_KEY_ENV})" in str(error)
    monkeypatch.setenv(REDACTION_KEY_ENV, "zz" * 32)
    monkeypatch.setenv(TOTP_KEY_ENV, shared_env["totp"])
    error = await start_fails(config, redis_url)
    assert isinstance(error, KeyMaterialError)
    assert f"the audit redaction key (environment variable {REDACTION_KEY_ENV})" in str(error)
    monkeypatch.delenv(TOTP_KEY_ENV)
    path = tmp_path / "a" / "keys" / "totp.key"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(_new_key("totp"))
    path.chmod(0o644)
    monkeypatch.setenv(REDACTION_KEY_ENV, shared_env["redaction"])
    error = await start_fails(config, redis_url)
    assert isinstance(error, KeyMaterialError)
    assert f"(file {path})" in str(error)
    assert "0o644" in str(error)
    assert await redis.keys("*") == []


async def test_an_unreachable_redis_refuses_start_with_keys_uncompared(
    tmp_path: Path, shared_env: dict[str, str]
) -> None:
    error = await start_fails(config_for(tmp_path, tmp_path / "a"), "redis://127.0.0.1:1/0")
    assert isinstance(error, KeyMismatch)
    assert "Redis unreachable" in str(error)
    assert "not started" in str(error)


async def test_a_redis_refusing_the_comparison_refuses_start_plainly(
    redis: aioredis.Redis, redis_url: str, config_a: GatewayConfig
) -> None:
    # The fingerprints key holds a value of another type: Redis answers the comparison
    # with an error reply, which is no agreement.
    await redis.set(keys.key_fingerprints(), "not a hash")
    before = await snapshot(redis)
    error = await start_fails(config_a, redis_url)
    assert isinstance(error, KeyMismatch), repr(error)
    assert "WRONGTYPE" in str(error)
    assert "not started" in str(error)
    assert await snapshot(redis) == before


async def test_forget_names_only_shared_keys_and_says_when_nothing_was_recorded(
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError, match="no shared key named 'audit'"):
        await forget(redis, "audit")
    config = config_file(tmp_path, tmp_path / "a")
    with pytest.raises(SystemExit) as exited:
        await admin(config, redis_url, "keys", "forget", "../totp")
    assert exited.value.code == 2
    await redis.hset(keys.key_fingerprints(), "handoff", "f" * 32)
    assert await admin(config, redis_url, "keys", "forget", "totp") == 0
    assert "nothing changed" in capsys.readouterr().out
    assert await redis.hgetall(keys.key_fingerprints()) == {b"handoff": b"f" * 32}


async def test_gateway_run_refuses_another_key_plainly_and_forget_lets_it_start(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, project_root: Path
) -> None:
    config = _write_config(tmp_path, redis_url=redis_url)
    # Another instance's TOTP key: a fingerprint this instance's key cannot have.
    await redis.hset(keys.key_fingerprints(), "totp", "0" * 32)
    before = await snapshot(redis)
    result = await asyncio.to_thread(run_gateway, project_root, "run", "--config", str(config))
    assert result.returncode == 1
    totp_file = tmp_path / "data" / "keys" / "totp.key"
    assert f"gateway: the TOTP encryption key (file {totp_file})" in result.stderr
    assert "gateway admin keys forget totp" in result.stderr
    assert "Traceback" not in result.stderr
    assert await snapshot(redis) == before

    forgotten = await asyncio.to_thread(
        run_gateway, project_root, "admin", "--config", str(config), "keys", "forget", "totp"
    )
    assert forgotten.returncode == 0, forgotten.stderr
    assert "re-enrol" in forgotten.stderr or "enrol again" in forgotten.stderr
    assert await redis.hexists(keys.key_fingerprints(), "totp") == 0


async def test_admin_commands_refuse_another_totp_key_and_change_nothing(
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    shared_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with started(config_for(tmp_path, tmp_path / "a"), redis_url):
        pass
    before = await snapshot(redis)
    monkeypatch.setenv(ENVS["totp"], _new_key("totp"))
    other = config_file(tmp_path, tmp_path / "b")
    # A secret stored under this key would be unreadable to every gateway on this Redis.
    assert (
        await admin(
            other, redis_url, "staff", "create", "eve", "--email", "e@x.example", "--name", "Eve"
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{TITLES['totp']} (environment variable {ENVS['totp']})" in err
    assert "the command changed nothing" in err
    assert await snapshot(redis) == before
    monkeypatch.setenv(ENVS["totp"], shared_env["totp"])
    assert (
        await admin(
            other, redis_url, "staff", "create", "eve", "--email", "e@x.example", "--name", "Eve"
        )
        == 0
    )
    assert await redis.exists(keys.staff("eve"))


async def test_a_successful_admin_command_records_the_totp_key_a_failed_one_nothing(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, shared_env: dict[str, str]
) -> None:
    config = config_file(tmp_path, tmp_path / "a")
    assert await admin(config, redis_url, "disable", "staff:nobody") == 1
    assert await redis.dbsize() == 0
    assert (
        await admin(
            config, redis_url, "staff", "create", "eve", "--email", "e@x.example", "--name", "Eve"
        )
        == 0
    )
    assert set(await fingerprints(redis)) == {"totp"}
