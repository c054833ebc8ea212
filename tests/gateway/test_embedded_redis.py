"""The embedded redis-server: private socket, persistence settings, clean stop."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import RedisStartError


def test_embedded_redis_uses_a_private_socket_and_aof_always(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "redis").st_mode) == 0o700
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        assert client.config_get("port")["port"] == "0"
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        version = str(client.info("server")["redis_version"])
        assert version.startswith("6.2"), version
        client.close()
        pid = server.pid
        assert pid is not None
    finally:
        server.stop()
    assert (
        not Path(f"/proc/{pid}").exists()
        or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )


def test_a_second_server_on_a_directory_in_use_is_refused(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis", persistent=False)
    first.start()
    try:
        client = redis.Redis(unix_socket_path=str(first.socket_path))
        client.set("kept", "1")
        with pytest.raises(RedisStartError, match="already answers"):
            EmbeddedRedis(tmp_path / "redis", persistent=False).start()
        # The first server keeps its socket and its data.
        assert client.get("kept") == b"1"
        client.close()
    finally:
        first.stop()
