"""The embedded redis-server: private socket, persistence settings, clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis, find_redis_server
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


def test_a_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    # SECURITY: the gateway trusts whatever answers on the socket in this directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    (data / "redis").symlink_to(elsewhere)
    server = EmbeddedRedis(data / "redis", persistent=False)
    with pytest.raises(RedisStartError, match="symbolic link"):
        server.start()
    assert server.pid is None
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755  # not chmod-ed through the link
    assert list(elsewhere.iterdir()) == []


def test_a_directory_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "redis").write_text("not a directory")
    with pytest.raises(RedisStartError, match="not a directory"):
        EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    assert (tmp_path / "redis").read_text() == "not a directory"


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_data_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    # Whoever may write in the data directory may swap the private one (and its socket)
    # for their own between the gateway's check and its connection.
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    with pytest.raises(RedisStartError, match=f"{mode:04o}"):
        EmbeddedRedis(data / "redis", persistent=False).start()
    assert not (data / "redis").exists()
    # and so is one that others may write higher up
    (data / "var").mkdir(mode=0o755)
    with pytest.raises(RedisStartError, match=f"{data}: mode {mode:04o}"):
        EmbeddedRedis(data / "var" / "redis", persistent=False).start()
    assert not (data / "var" / "redis").exists()


def test_a_sticky_shared_parent_is_accepted_and_a_loose_directory_tightened(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: others cannot rename or remove what is ours
    (shared / "redis").mkdir()
    (shared / "redis").chmod(0o755)
    server = EmbeddedRedis(shared / "redis", persistent=False)
    server.start()
    try:
        assert stat.S_IMODE((shared / "redis").stat().st_mode) == 0o700
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        assert client.ping()
        client.close()
    finally:
        server.stop()


def test_a_directory_another_process_is_starting_a_server_in_is_refused(tmp_path: Path) -> None:
    # The PING check alone leaves a window while the other server starts up: both would
    # append to one AOF. The directory's lock closes it.
    first = EmbeddedRedis(tmp_path / "redis", persistent=False)
    first.start()
    try:
        # the socket gone quiet (say, the server is busy loading its AOF): still refused
        first.socket_path.rename(tmp_path / "redis" / "moved.sock")
        second = EmbeddedRedis(tmp_path / "redis", persistent=False)
        with pytest.raises(RedisStartError, match="another process is using"):
            second.start()
        assert second.pid is None
        moved = redis.Redis(unix_socket_path=str(tmp_path / "redis" / "moved.sock"))
        assert moved.ping()  # the first server is untouched
        moved.close()
    finally:
        first.stop()
    # once the first has stopped, the directory is free again
    again = EmbeddedRedis(tmp_path / "redis", persistent=False)
    again.start()
    again.stop()


def test_concurrent_starts_on_one_directory_leave_one_server(tmp_path: Path) -> None:
    servers = [EmbeddedRedis(tmp_path / "redis", persistent=False) for _ in range(4)]
    outcomes: list[str] = []
    done = threading.Barrier(len(servers) + 1)
    release = threading.Event()

    def start(server: EmbeddedRedis) -> None:
        try:
            server.start()
            outcomes.append("started")
        except RedisStartError:
            outcomes.append("refused")
        done.wait()
        release.wait(30)  # the parent-death signal follows this thread: keep it alive

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    try:
        done.wait(30)
        assert sorted(outcomes) == ["refused"] * (len(servers) - 1) + ["started"]
    finally:
        for server in servers:
            server.stop()
        release.set()
        for thread in threads:
            thread.join(30)


def test_restart_if_dead_brings_back_a_killed_server_but_never_a_stopped_one(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persistent=True)
    assert server.restart_if_dead() is False  # never started
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        client.set("kept", "1")
        assert server.restart_if_dead() is False  # alive: nothing to do
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30  # the kill lands at once; a loaded machine may lag
        while not server.restart_if_dead() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.pid not in (None, first)
        assert client.get("kept") == b"1"
        client.close()
        # and the directory is still locked against a second server meanwhile
        with pytest.raises(RedisStartError, match=r"already answers|another process"):
            EmbeddedRedis(tmp_path / "redis", persistent=True).start()
    finally:
        server.stop()
    assert server.restart_if_dead() is False  # stopped on purpose stays stopped
    assert server.pid is None


def _killed(server: EmbeddedRedis) -> int:
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def _restarted(server: EmbeddedRedis, timeout_s: float | None) -> bool:
    """Poll until the killed server is seen dead and spawned again (a loaded machine lags)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.restart_if_dead(timeout_s):
            return True
        time.sleep(0.02)
    return False


def test_a_restart_that_cannot_spawn_is_a_start_error_and_a_later_one_succeeds(
    tmp_path: Path,
) -> None:
    # The app's keeper retries on RedisStartError; any other error (the binary gone after
    # an upgrade, no descriptors left) would end it, and the server would stay down.
    binary = tmp_path / "bin" / "redis-server"
    binary.parent.mkdir()
    shutil.copy2(find_redis_server(), binary)
    server = EmbeddedRedis(tmp_path / "redis", binary=str(binary), persistent=True)
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        client.set("kept", "1")
        moved = binary.rename(tmp_path / "bin" / "elsewhere")
        _killed(server)
        with pytest.raises(RedisStartError, match="cannot start"):
            _restarted(server, 10.0)
        assert server.pid is None
        moved.rename(binary)
        assert server.restart_if_dead() is True
        assert client.get("kept") == b"1"
        client.close()
    finally:
        server.stop()


def test_restart_without_waiting_spawns_and_the_server_comes_up_later(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persistent=True)
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        client.set("kept", "1")
        first = _killed(server)
        assert _restarted(server, None)
        assert server.pid not in (None, first)
        assert server.restart_if_dead(timeout_s=None) is False  # spawned: alive, left alone
        deadline = time.monotonic() + 30
        kept = None
        while kept is None and time.monotonic() < deadline:
            try:
                kept = client.get("kept")
            except redis.RedisError:
                time.sleep(0.05)
        assert kept == b"1"
        client.close()
    finally:
        server.stop()
