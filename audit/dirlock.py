"""One change at a time to a private key directory, across processes (an flock on it).

    with locked_directory(path):
        ...  # read, create or rotate the keys in `path`

The directory is made if missing and kept 0700; the directory itself is locked, so no lock
file joins the keys in it. Closing the descriptor releases the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked_directory(path: Path) -> Iterator[None]:
    """Hold `path`'s exclusive lock (blocking) while the block runs."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # SECURITY: private keys live only in a 0700 directory
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # SECURITY: two instances creating keys at once would each use a key of their own
        # while the directory kept only one: signatures nobody else could verify.
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
