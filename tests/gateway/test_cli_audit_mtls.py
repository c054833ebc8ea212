"""The audit commands present the gateway's client certificate to a Redis that asks for one.

A real redis-server behind a TLS front that requires a client certificate signed by the
test CA: `gateway audit collect --config FILE` takes `redis.client_cert_file` and
`client_key_file` from the config (as the gateway itself does), and `python -m audit
collect` takes `--redis-client-cert-file` / `--redis-client-key-file`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from audit.keys import KeyDirectory
from audit.record import event_record
from audit.writer import AuditWriter
from gateway import keys
from gateway.cli.audit import audit_defaults
from gateway.clock import ManualClock
from gateway.config import load_config
from tests.gateway.redis_servers import Pki, RedisProcess, TlsFront, make_pki, start_redis
from tests.gateway.test_cli_audit_redis import run


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path_factory.mktemp("mtls-backend"))
    yield server
    server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def front(pki: Pki, backend: RedisProcess) -> AsyncIterator[TlsFront]:
    server = TlsFront(pki, backend.port, require_client_cert=True)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def frames(backend: RedisProcess, tmp_path: Path, clock: ManualClock) -> None:
    client = aioredis.Redis(port=backend.port)
    try:
        await client.flushall()
        signer = KeyDirectory(tmp_path / "data" / "audit-keys").ensure(clock.now())
        writer = AuditWriter(client, signer, stream=keys.audit_stream(), now=clock.now)
        await writer.open()
        await writer.append(event_record("gateway.start", at=clock.now(), category="gateway"))
        await writer.close()
    finally:
        await client.aclose()


def write_config(tmp_path: Path, front: TlsFront, pki: Pki, *, client_cert: bool) -> Path:
    mutual = (
        f", client_cert_file: {pki.client_cert}, client_key_file: {pki.client_key}"
        if client_cert
        else ""
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""console_url: https://gateway.test:8443
data_dir: {tmp_path / "data"}
listeners: [{{address: 127.0.0.1, port: 8443}}]
redis: {{url: "{front.url}", ca_file: {pki.ca}{mutual}}}
audit: {{segment_dir: {tmp_path / "segments"}}}
"""
    )
    return config


def test_audit_defaults_carry_the_client_certificate(
    tmp_path: Path, pki: Pki, front: TlsFront
) -> None:
    defaults = audit_defaults(load_config(write_config(tmp_path, front, pki, client_cert=True)))
    assert defaults.redis_client_cert_file == pki.client_cert
    assert defaults.redis_client_key_file == pki.client_key
    assert defaults.redis_ca_file == pki.ca


async def test_gateway_audit_collect_presents_the_client_certificate(
    tmp_path: Path, pki: Pki, front: TlsFront, frames: None
) -> None:
    config = write_config(tmp_path, front, pki, client_cert=True)
    code, err = await run("gateway", "audit", "collect", "--once", "--config", str(config))
    assert code == 0, err
    assert "collected 3 frame(s)" in err  # genesis, the start event, the closing checkpoint
    assert sorted((tmp_path / "segments").glob("*.seg"))
    assert front.client_subjects
    assert all("gateway client" in subject for subject in front.client_subjects)


async def test_without_the_client_certificate_the_server_refuses(
    tmp_path: Path, pki: Pki, front: TlsFront, frames: None
) -> None:
    config = write_config(tmp_path, front, pki, client_cert=False)
    code, err = await run("gateway", "audit", "collect", "--once", "--config", str(config))
    assert code == 1
    assert "collect:" in err
    assert not (tmp_path / "segments").exists() or not list((tmp_path / "segments").iterdir())


async def test_python_m_audit_collect_takes_the_client_certificate_flags(
    tmp_path: Path, pki: Pki, front: TlsFront, frames: None
) -> None:
    segments = tmp_path / "segments"
    code, err = await run(
        "audit", "collect", "--once", "--redis-url", front.url, "--stream", keys.audit_stream(),
        "--segment-dir", str(segments), "--redis-ca-file", str(pki.ca),
        "--redis-client-cert-file", str(pki.client_cert),
        "--redis-client-key-file", str(pki.client_key),
    )  # fmt: skip
    assert code == 0, err
    assert sorted(segments.glob("*.seg"))
    assert front.client_subjects


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--redis-client-cert-file", "CERT"), "give both --redis-client-cert-file and"),
        (("--redis-client-key-file", "KEY"), "give both --redis-client-cert-file and"),
        (
            ("--redis-client-cert-file", "MISSING", "--redis-client-key-file", "KEY"),
            "--redis-client-cert-file: no such file",
        ),
        (
            ("--redis-client-cert-file", "CERT", "--redis-client-key-file", "MISSING"),
            "--redis-client-key-file: no such file",
        ),
    ],
)
async def test_client_certificate_flags_are_checked_before_connecting(
    tmp_path: Path, pki: Pki, front: TlsFront, flags: tuple[str, ...], message: str
) -> None:
    named = {"CERT": str(pki.client_cert), "KEY": str(pki.client_key)}
    named["MISSING"] = str(tmp_path / "missing.pem")
    code, err = await run(
        "audit", "collect", "--once", "--redis-url", front.url, "--stream", keys.audit_stream(),
        "--segment-dir", str(tmp_path / "segments"), "--redis-ca-file", str(pki.ca),
        *(named.get(flag, flag) for flag in flags),
    )  # fmt: skip
    assert code == 2
    assert message in err
    assert front.handshakes == 0  # refused before any connection


async def test_client_certificate_needs_rediss(
    tmp_path: Path, pki: Pki, backend: RedisProcess
) -> None:
    code, err = await run(
        "audit", "collect", "--once", "--redis-url", backend.url, "--stream", keys.audit_stream(),
        "--segment-dir", str(tmp_path / "segments"),
        "--redis-client-cert-file", str(pki.client_cert),
        "--redis-client-key-file", str(pki.client_key),
    )  # fmt: skip
    assert (code, err.strip()) == (
        2,
        "collect: --redis-client-cert-file and --redis-client-key-file need a rediss:// URL",
    )
