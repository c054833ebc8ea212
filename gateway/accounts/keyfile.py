"""Secret keys kept outside Redis: an environment variable, else a 0600 file in data_dir.

A key is 32 random bytes, written base64url-encoded. The file is created on first use
with mode 0600 inside a 0700 `keys/` directory, written whole before it appears (gateway
instances sharing the directory and starting at once all read the one key that won); an
existing file readable by others is refused rather than used (someone has loosened it).

    key = secret_key(config.data_dir, "totp", env="GATEWAY_TOTP_KEY")
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from pathlib import Path

from gateway.accounts.errors import SecretKeyError

KEY_BYTES = 32


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SecretKeyError(f"{where}: not base64url ({exc})") from exc
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"{where}: expected {KEY_BYTES} bytes, got {len(key)}")
    return key


def secret_key(data_dir: Path, name: str, *, env: str) -> bytes:
    """The key named `name`: from $env if set, else data_dir/keys/<name>.key (created 0600)."""
    from_env = os.environ.get(env)
    if from_env:
        return _decode(from_env, f"environment variable {env}")
    directory = data_dir / "keys"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.key"
    if not path.exists():
        create_once(path, base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # SECURITY: a key others can read is a key others may have copied.
        raise SecretKeyError(f"{path}: mode {oct(mode & 0o777)} lets others read it; expected 0600")
    text = path.read_text(encoding="ascii")
    if not text.strip():
        raise SecretKeyError(f"{path}: empty key file")
    return _decode(text, str(path))


def create_once(path: Path, text: str) -> None:
    """Write a new key (`text`) to `path` (0600) unless another process got there first.

    The key is written whole to a file of its own and then linked into place: a process
    starting at the same moment sees either no key file or a complete one, never one
    still empty, and every process agrees on the first key linked.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another's key came first: it stands
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
