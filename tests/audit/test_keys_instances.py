"""Gateway instances sharing one data directory, starting at the same moment: they agree on
one first signing key, and the keyring holds the key every one of them signs with."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from audit.keys import KeyDirectory, Keyring

INSTANCES = 6
TRIALS = 3
WAIT_S = 60.0  # generous: a loaded machine

# Each child, once imported, says so (a file of its own beside the start file), waits for
# the start file (so that all create keys at the same instant), then prints the id of the
# key it would sign with, or the error that stopped it.
CHILD = r"""
import os, sys, time
from pathlib import Path
from audit.keys import KeyDirectory
directory, go = Path(sys.argv[1]), Path(sys.argv[2])
Path(f"{go}.ready-{os.getpid()}").touch()
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
try:
    print(KeyDirectory(directory).ensure(time.time()).current().key_id)
except Exception as exc:
    print(f"error: {type(exc).__name__}: {exc}")
"""


def start_together(directory: Path, go: Path) -> list[str]:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), str(go)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        for _ in range(INSTANCES)
    ]
    try:
        # Wait on the condition, with a generous bound: every child at the start line.
        deadline = time.monotonic() + WAIT_S
        while len(list(go.parent.glob(f"{go.name}.ready-*"))) < INSTANCES:
            assert time.monotonic() < deadline, "the instances did not reach the start line"
            time.sleep(0.01)
        go.touch()
        outputs = [child.communicate(timeout=WAIT_S)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    return [out.decode().strip() for out in outputs]


def test_instances_starting_at_once_agree_on_one_first_key(tmp_path: Path) -> None:
    for trial in range(TRIALS):
        directory = tmp_path / f"trial-{trial}" / "audit-keys"
        said = start_together(directory, tmp_path / f"go-{trial}")
        assert len(set(said)) == 1, said
        [key_id] = set(said)
        assert not key_id.startswith("error"), key_id
        ring = Keyring.load(directory / "keyring.json")
        assert [k.key_id for k in ring.keys] == [key_id]
        keys = KeyDirectory(directory)
        assert keys.active().key_id == key_id
        assert ring.get(key_id) is not None
        assert ring.keys[0].public_key == keys.active().public_bytes()
        assert not list(directory.glob("*.tmp"))
        assert [p.name for p in (directory / "signing").iterdir()] == [f"{key_id}.key"]


def test_rotations_one_after_another_keep_every_public_key(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "audit-keys")
    first = keys.ensure(time.time())
    second = keys.rotate(time.time())
    ring = keys.keyring()
    assert [k.key_id for k in ring.keys] == [first.key_id, second.key_id]
    assert keys.active().key_id == second.key_id
    assert not list((tmp_path / "audit-keys").glob("*.tmp"))
