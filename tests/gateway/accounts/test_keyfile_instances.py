"""Gateway instances sharing one data directory and starting at once read one secret key.

Threads race on the key file exactly as processes do (the file system is the only thing
they share here), and a thread switch right after the file's creation makes the race
show every few tries.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.accounts.keyfile import secret_key
from gateway.app import REDACTION_KEY_ENV, redaction_key

STARTERS = 8
T = TypeVar("T")
TRIALS = 30


def race(read_key: Callable[[], T], starters: int = STARTERS) -> list[T | Exception]:
    """What each of `starters` threads released at once read (or the error it met)."""
    start = threading.Barrier(starters)
    read: list[T | Exception] = []

    def starter() -> None:
        start.wait()
        try:
            read.append(read_key())
        except Exception as exc:  # collected: the assertions name it
            read.append(exc)

    threads = [threading.Thread(target=starter) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return read


def test_starters_racing_on_a_new_key_file_all_read_the_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_TEST_KEY", raising=False)
    for trial in range(TRIALS):
        data_dir = tmp_path / f"trial-{trial}"
        read = race(partial(secret_key, data_dir, "totp", env="GATEWAY_TEST_KEY"))
        assert len(read) == STARTERS
        assert all(isinstance(key, bytes) for key in read), read
        assert len(set(read)) == 1
        key_file = data_dir / "keys" / "totp.key"
        assert os.stat(key_file).st_mode & 0o777 == 0o600
        assert sorted(p.name for p in (data_dir / "keys").iterdir()) == ["totp.key"]
        # Read again later: the same key.
        assert secret_key(data_dir, "totp", env="GATEWAY_TEST_KEY") == read[0]


def test_starters_racing_on_a_new_redaction_key_all_read_the_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDACTION_KEY_ENV, raising=False)
    for trial in range(TRIALS):
        directory = tmp_path / f"trial-{trial}" / "audit-keys"
        read = race(partial(redaction_key, directory))
        assert len(read) == STARTERS
        assert all(isinstance(key, bytes) and len(key) == 32 for key in read), read
        assert len(set(read)) == 1
        assert os.stat(directory / "redaction.key").st_mode & 0o777 == 0o600
        assert [p.name for p in directory.iterdir()] == ["redaction.key"]
        assert redaction_key(directory) == read[0]
