"""Small shared checks for the access workflow: Redis reply text and id syntax."""

from __future__ import annotations

import re

from gateway.access.errors import AccessInvalid

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def as_text(value: object) -> str:
    """Redis replies are bytes or str depending on the client; the workflow works in str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def check_id(value: object, what: str) -> str:
    # SECURITY: ids become parts of Redis keys; only this alphabet can never forge one.
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise AccessInvalid(f"invalid_{what}", f"{what} {value!r}: expected [A-Za-z0-9._-]{{1,64}}")
    return value
