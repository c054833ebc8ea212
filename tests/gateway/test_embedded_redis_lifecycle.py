"""No orphan redis-server: the embedded server dies with its owner however the owner ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.processes import alive, wait_gone

OWNER = """
import signal, sys, time
from pathlib import Path
from gateway.embedded_redis import EmbeddedRedis

server = EmbeddedRedis(Path(sys.argv[1]))
server.start()

def stop(signum, frame):
    server.stop()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print(server.pid, flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_orphan_redis_after_owner_ends(tmp_path: Path, how: signal.Signals) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "redis")],
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        try:
            assert owner.stdout is not None
            redis_pid = int(owner.stdout.readline())
            assert alive(redis_pid)
            os.kill(owner.pid, how)
            owner.wait(10)
            assert wait_gone(redis_pid), f"redis-server {redis_pid} outlived its owner ({how.name})"
        finally:
            if owner.poll() is None:
                owner.kill()


def test_a_dead_server_is_reported_with_its_reason(tmp_path: Path) -> None:
    from gateway.embedded_redis import EmbeddedRedis
    from gateway.errors import RedisStartError

    server = EmbeddedRedis(tmp_path / "redis", appendfsync="never-valid")
    with pytest.raises(RedisStartError, match="exited"):
        server.start(timeout_s=5)
