"""Reading console forms: urlencoded only, size-limited, one value per field.

form = await read_form(request)          # 415 / 413 / 400 as ApiError
email = field(form, "email", max_length=254)
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.api.common import ApiError, invalid_field, read_body
from gateway.appkeys import CONFIG
from gateway.denials import Denial

MAX_FIELDS = 16
LOCAL_PATH = re.compile(r"/(?![/\\])[\x21-\x7e]{0,2047}")


async def read_form(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(Denial(415, "unsupported_media_type", "send the form urlencoded"))
    data = await read_body(request, request.config_dict[CONFIG].limits.max_form_bytes)
    try:
        pairs = parse_qsl(
            data.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(data),
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(Denial(400, "malformed_form", "the form could not be read")) from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise ApiError(Denial(400, "malformed_form", f"field {name!r} sent twice"))
        form[name] = value
    return form


def field(form: dict[str, str], name: str, *, max_length: int) -> str:
    value = form.get(name, "")
    if len(value) > max_length:
        raise invalid_field(name, f"at most {max_length} characters")
    if any(ord(c) < 0x20 for c in value):
        raise invalid_field(name, "no control characters")
    return value


def local_path(value: str | None) -> str | None:
    """`value` if it is a path on the console itself (never another origin), else None."""
    if value is None or not LOCAL_PATH.fullmatch(value) or value.startswith("/.gateway/"):
        return None
    return value
