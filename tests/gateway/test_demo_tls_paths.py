"""`gateway demo` makes its throw-away TLS material only inside the config's data directory.

The demo writes a CA key, a leaf key and certificates at the config's `tls:` paths and
replaces whatever does not fit; pointed at a config whose certificate lives elsewhere (a
real deployment's), it would overwrite that certificate and key. It refuses instead.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.cli.demo import Demo
from gateway.config import parse_config
from gateway.errors import GatewayError
from tests.gateway.redis_servers import free_port


@pytest.mark.parametrize(
    "tls",
    [
        "{cert_file: ../etc/gw.crt, key_file: ../etc/gw.key, ca_file: var/tls/ca.crt}",
        "{cert_file: var/tls/gw.crt, key_file: ../etc/gw.key, ca_file: var/tls/ca.crt}",
        "{cert_file: var/tls/gw.crt, key_file: var/tls/gw.key, ca_file: ../etc/ca.crt}",
        "{cert_file: var/../../etc/gw.crt, key_file: var/tls/gw.key, ca_file: var/tls/ca.crt}",
    ],
)
async def test_the_demo_never_writes_tls_material_outside_its_data_dir(
    tmp_path: Path, tls: str
) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    etc.chmod(0o755)
    originals = {"gw.crt": b"real certificate\n", "gw.key": b"real key\n", "ca.crt": b"ca\n"}
    for name, data in originals.items():
        (etc / name).write_bytes(data)
    (etc / "gw.key").chmod(0o600)
    config = parse_config(
        "console_url: https://gateway.localhost:8443\n"
        "data_dir: var\n"
        "listeners: [{address: 127.0.0.1, port: 0}]\n"
        f"tls: {tls}\n",
        "demo.yaml",
        base=root,
    )
    out = io.StringIO()
    demo = Demo(config, out)
    try:
        with pytest.raises(GatewayError, match="outside the data directory"):
            await demo.start(free_port(), None)
    finally:
        await demo.stop()
    assert {p.name: p.read_bytes() for p in etc.iterdir()} == originals
    assert not (etc / "ca.key").exists()
    assert etc.stat().st_mode & 0o777 == 0o755  # not made private by the demo either
    assert demo.gateway is None
