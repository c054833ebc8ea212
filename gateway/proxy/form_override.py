"""Reading a POST's form body ahead for its `_method` fields, on routes that ask for it.

Rails (Rack::MethodOverride), Laravel and Symfony take `POST /users/5` with the form
field `_method=DELETE` for a DELETE. On a route with `method_override: body` the policy
stage reads such a body whole, up to `FORM_BODY_LIMIT` bytes, and judges every
`_method` value found as a method too. The bytes read are kept on the flow and sent
upstream exactly as received (see `gateway.proxy.streaming`).

What counts as a form (fail closed: read when an application might parse one):

    Content-Type: application/x-www-form-urlencoded   -> urlencoded
    Content-Type: multipart/<anything>; boundary=...  -> multipart
    no Content-Type, or an empty one                   -> urlencoded (Rack parses those)
    unparseable, naming form / multipart / urlencoded  -> the form it names

A body over the limit is refused (413), one that cannot be parsed (400: compressed, a
transfer-encoded `_method` part, a malformed multipart message), and a client too slow
to send it (408): with the opt-in on, nothing is forwarded unjudged.
"""

from __future__ import annotations

import asyncio
import email.message
import re
from dataclasses import dataclass
from email.utils import collapse_rfc2231_value
from urllib.parse import unquote, unquote_plus

import aiohttp
from aiohttp import web

from gateway.denials import Denial
from gateway.proxy.expect import send_continue

FORM_BODY_LIMIT = 64 * 1024  # a form carrying a method override is small; uploads are not
MAX_OVERRIDE_CHARS = 32  # longer values are no method any framework takes

_MEDIA_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"\s*({_MEDIA_NAME})/({_MEDIA_NAME})\s*(?:;.*)?", re.DOTALL)
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_FORMISH = ("form", "multipart", "urlencoded")
_PAIR_SEPARATORS = re.compile(r"[&;]")


class FormUnparseable(ValueError):
    """A form body (or its Content-Type) the gateway cannot read for certain."""


@dataclass(frozen=True)
class FormKind:
    """How a body is read as a form: urlencoded, or multipart with its boundary."""

    multipart: bool
    boundary: str = ""


def form_kind(request: web.BaseRequest) -> FormKind | None:
    """The form a POST's body is read as, or None when no application reads it as one.

    Raises FormUnparseable for a form whose parsing cannot be decided (several
    Content-Type headers, a multipart type without a usable boundary).
    """
    values = request.headers.getall("Content-Type", [])
    if len(values) > 1:
        # SECURITY: the gateway and the application could each pick a different one.
        raise FormUnparseable("several Content-Type headers")
    text = values[0] if values else ""
    if not text.strip():
        return FormKind(multipart=False)
    lowered = text.lower()
    matched = _MEDIA_TYPE.fullmatch(text)
    if matched is None:
        # SECURITY: a type the gateway cannot parse may still be one the application
        # reads as a form (Rack splits at ',' as well); whatever names a form is one.
        if not any(word in lowered for word in _FORMISH):
            return None
        multipart = "multipart" in lowered
    else:
        kind, subtype = matched.group(1).lower(), matched.group(2).lower()
        if kind == "multipart":
            multipart = True
        elif (kind, subtype) == ("application", "x-www-form-urlencoded"):
            multipart = False
        else:
            return None
    for coding in request.headers.getall("Content-Encoding", []):
        if coding.strip().lower() not in ("", "identity"):
            # SECURITY: an application (or its middleware) inflating the body would see
            # fields the gateway, reading compressed bytes, never could.
            raise FormUnparseable("a form with a Content-Encoding cannot be judged")
    if not multipart:
        return FormKind(multipart=False)
    return FormKind(multipart=True, boundary=_boundary(text))


def _boundary(content_type: str) -> str:
    header = email.message.Message()
    header["Content-Type"] = content_type
    found = [v for k, v in header.get_params(failobj=[]) if k.lower() == "boundary"]
    if len(found) != 1 or not isinstance(found[0], str):
        raise FormUnparseable("a multipart Content-Type needs exactly one boundary")
    boundary = found[0]
    if not _BOUNDARY.fullmatch(boundary):
        raise FormUnparseable("the multipart boundary is not a valid one (RFC 2046)")
    return boundary


def is_override_name(name: str) -> bool:
    """Is a form field named `name` one a framework reads as `_method`?

    Any case and surrounding space; PHP reads `.`, ` ` and an unclosed `[` in a name as
    `_`, and `_method[...]` as the field `_method` (an array).
    """
    key = name.strip().lower()
    if key.split("[", 1)[0] == "_method":
        return True
    return key.translate({ord("."): "_", ord(" "): "_", ord("["): "_"}) == "_method"


def _method_of(value: str) -> str | None:
    method = value.strip().upper()[:MAX_OVERRIDE_CHARS]
    return method or None


def urlencoded_overrides(body: bytes) -> list[str]:
    """Every `_method` value of an urlencoded body, percent-decoded, in order."""
    text = body.decode("latin-1")  # byte for byte: names and methods are ASCII
    if "%" not in text and "method" not in text.lower():
        return []  # no field can be named `_method`: most forms, read in one pass
    found: list[str] = []
    # SECURITY: some parsers split pairs at ';' too; reading both ways judges either.
    for pair in _PAIR_SEPARATORS.split(text):
        name, _equals, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name, encoding="latin-1")
        if is_override_name(name):
            method = _method_of(unquote_plus(value, encoding="latin-1"))
            if method is not None:
                found.append(method)
    return found


def multipart_overrides(body: bytes, boundary: str) -> list[str]:
    """Every `_method` field's value of a multipart body; FormUnparseable when the body
    is not a complete multipart message with that boundary."""
    found: list[str] = []
    for names, encoded, content in _multipart_parts(body, boundary.encode("latin-1")):
        if any(is_override_name(n) or is_override_name(unquote(n)) for n in names):
            if encoded:
                # SECURITY: a base64 or quoted-printable `_method` may be decoded upstream.
                raise FormUnparseable("a _method field has a Content-Transfer-Encoding")
            method = _method_of(content.decode("latin-1"))
            if method is not None:
                found.append(method)
    return found


def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[list[str], bool, bytes]]:
    delimiter = b"--" + boundary
    _refuse_bare_line_feed_boundaries(body, delimiter)
    if body.startswith(delimiter):
        position = len(delimiter)
    else:
        start = body.find(b"\r\n" + delimiter)
        if start < 0:
            raise FormUnparseable("the multipart body has no opening boundary")
        position = start + 2 + len(delimiter)
    parts: list[tuple[list[str], bool, bytes]] = []
    while True:
        if body.startswith(b"--", position):
            if b"\n" + delimiter in body[position:]:
                # SECURITY: PHP reads past the close delimiter to the next boundary line.
                raise FormUnparseable("the multipart epilogue holds a boundary line")
            return parts  # the close delimiter: anything after it is epilogue
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise FormUnparseable("a multipart boundary line is malformed")
        following = body.find(b"\r\n" + delimiter, line_end)
        if following < 0:
            raise FormUnparseable("the multipart body ends before its close boundary")
        parts.append(_part(body[line_end + 2 : following]))
        position = following + 2 + len(delimiter)


def _refuse_bare_line_feed_boundaries(body: bytes, delimiter: bytes) -> None:
    """PHP ends a part at "\\n--boundary" without the "\\r": such a body is split into
    other parts there than here, so it is refused."""
    at = body.find(b"\n" + delimiter)
    while at >= 0:
        if at == 0 or body[at - 1] != ord("\r"):
            # SECURITY: a part only PHP would see could carry `_method`.
            raise FormUnparseable("a multipart boundary follows a bare line feed")
        at = body.find(b"\n" + delimiter, at + 1)


def _part(part: bytes) -> tuple[list[str], bool, bytes]:
    """A part's field names, whether its content is transfer-encoded, and its content."""
    if part.startswith(b"\r\n"):
        return [], False, part[2:]  # no headers at all
    head, separator, content = part.partition(b"\r\n\r\n")
    if not separator:
        raise FormUnparseable("a multipart part has no end to its headers")
    names: list[str] = []
    encoded = False
    dispositions = 0
    ids: list[str] = []
    text = head.decode("latin-1")
    lowered = text.lower()
    for line in text.split("\r\n"):
        header, colon, value = line.partition(":")
        if (
            not colon
            or not header
            or header != header.strip()
            or line[:1] in (" ", "\t")
            or "\r" in line
            or "\n" in line
        ):
            # SECURITY: folded, nameless or bare-CR/LF header lines are read differently by
            # parsers (PHP splits header lines at a bare "\n").
            raise FormUnparseable("a multipart part has a malformed header line")
        header = header.lower()
        if header == "content-transfer-encoding":
            encoded = encoded or value.strip().lower() not in ("7bit", "8bit", "binary")
        elif header == "content-id":
            ids.append(value.strip())  # older Rack names a part by its Content-ID
        if header != "content-disposition":
            continue
        dispositions += 1
        if not any(c in value for c in "%*\\") and "method" not in value.lower():
            continue  # no name in it can read as `_method` (most parts): not parsed
        parsed = email.message.Message()
        parsed["Content-Disposition"] = value
        for key, param in parsed.get_params(failobj=[], header="Content-Disposition")[1:]:
            if key.lower().rstrip("*") == "name":
                names.append(param if isinstance(param, str) else collapse_rfc2231_value(param))
    if dispositions > 1:
        raise FormUnparseable("a multipart part has several Content-Disposition headers")
    # SECURITY: Rack finds these anywhere in a part's head, not only as header names.
    elsewhere = lowered.count("content-disposition") - dispositions
    if elsewhere or lowered.count("content-id") > len(ids):
        raise FormUnparseable("a multipart part names a field outside its naming headers")
    names.extend(ids)
    return names, encoded, content


@dataclass(frozen=True)
class FormBody:
    """A form body read ahead: its exact bytes and the `_method` values it carries."""

    body: bytes
    overrides: tuple[str, ...]


async def read_form(
    request: web.BaseRequest, kind: FormKind, timeout_s: float, limit: int = FORM_BODY_LIMIT
) -> FormBody | Denial:
    """Read the whole body (at most `limit` bytes) and find its `_method` values.

    The caller has authorised the flow so far: `Expect: 100-continue` is answered here.
    """
    declared = request.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return _too_large(limit)
    await send_continue(request)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.read(limit + 1 - len(body)):
                body += chunk
                if len(body) > limit:
                    return _too_large(limit)
    except TimeoutError:
        return Denial(408, "request_timeout", "The request body did not arrive in time.")
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError):
        return Denial(400, "bad_form_body", "The request body ended before it was complete.")
    data = bytes(body)
    try:
        if kind.multipart:
            found = multipart_overrides(data, kind.boundary)
        else:
            found = urlencoded_overrides(data)
    except ValueError as exc:  # FormUnparseable, or a header the email parser refused
        return unparseable(str(exc))
    return FormBody(data, tuple(dict.fromkeys(found)))


def unparseable(why: str) -> Denial:
    return Denial(
        400,
        "bad_form_body",
        f"The form body cannot be read to judge its _method fields: {why}.",
    )


def _too_large(limit: int) -> Denial:
    return Denial(
        413,
        "body_too_large",
        f"A form body on this route is judged for _method fields and may be at most {limit} bytes.",
    )
