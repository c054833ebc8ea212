"""Redaction: secrets in a record become keyed hashes before the record is chained.

What is redacted, wherever it appears in a body:
- header values of `Authorization`, `Cookie` (each cookie's value), `Set-Cookie` (the
  cookie's value), `Proxy-Authorization`, `X-Api-Key`, configured header names, and
  headers named like a denylisted field (`X-Auth-Token`);
- JSON and form fields whose name is on the denylist (password, secret, token, api_key,
  …; a name matches when, lower-cased with `-`, `.`, `[`, `]` read as `_`, it equals an
  entry or starts/ends with `entry_` / `_entry`), in captured bodies, in `url.query`, and in any
  map of the body (e.g. `gateway.details`); in text bodies (and in each string of a JSON
  body) JSON-looking pairs, XML elements, multipart form fields, form pairs and URL
  parameters (`Redactor._text`), and URL parameters in every header value;
- bearer tokens and JWTs found in any string value.

A redacted value becomes `[redacted:hmac-sha256:<key id>:<32 hex>]`, an HMAC of the
secret under the redaction key, so equal secrets still correlate across records made
with the same key while nothing about the secret is revealed. Every redaction is listed
in `gateway.redactions` as `{"field": ..., "kind": ...}`.

`find_plaintext_secrets(body)` is the verifier's side: it reports every place where a
denylisted value survived in plain text.

    redactor = Redactor(key=os.urandom(32), key_id="r1", headers={"x-tenant-secret"})
    clean = redactor.scrub(body)                    # a redacted copy
    data = redactor.scrub_encoded(body, encode)     # the same, as the stored bytes

The hot path (`scrub_encoded`, used by the writer for every frame) first redacts the
parts with structure of their own (headers, query, captured bodies; tokens in every
header name and value). A proxied request's record (an `HttpRecord` from
`audit.record.http_record`, with the builder's keys only) then has just its
`UNTRUSTED_TEXT` fields scanned for tokens: every other field of it is the gateway's
own (ids, timestamps, numbers, validated addresses). Any other body is read once without
copying, asking the walk's own questions (a denylisted name, a token-like string), and
walked and copied as `scrub` does only if one is answered yes. Either way the stored
bytes are those `scrub` gives (the tests compare both on hostile input).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote_plus

from audit.frame import after_packing, array_header, body_packer
from audit.record import HTTP_RECORD_KEYS, MAX_DEPTH, UNTRUSTED_TEXT, HttpRecord, too_deep

DEFAULT_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"}
)
DEFAULT_FIELDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "client_secret",
        "credentials",
        "totp",
        "otp",
        "ssn",
        "card_number",
        "cvv",
    }
)

MARKER = re.compile(r"\[redacted:hmac-sha256:[A-Za-z0-9._-]{1,64}:[0-9a-f]{32}\]")
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+([A-Za-z0-9._~+/=-]{8,})")
# Pairs of JSON text that a truncated or mislabelled body may still contain: a quoted
# name, then a string value (its closing quote possibly cut off) or a number.
_JSON_PAIR = re.compile(
    r'"((?:[^"\\]|\\.){1,128})"\s*:\s*(?:"((?:[^"\\]|\\.)*)"?|(-?[0-9][0-9.eE+-]*))'
)
# A multipart part's headers, naming the field (`name="…"`, not `filename="…"`), up to
# the blank line before its value; the value runs to the next boundary line or the end.
_PART_HEAD = re.compile(r"(?im)^content-disposition:[^\r\n]*")
_PART_NAME = re.compile(r'[;\s]name="([^"\r\n]{1,128})"')
_BLANK_LINE = re.compile(r"\r?\n\r?\n")
_PART_END = re.compile(r"\r?\n--")
# A URL parameter anywhere in a text: `?name=value`, `&name=value`, `;name=value` or
# `#name=value` (a fragment's parameters: OAuth's implicit flow puts `access_token` there).
_URL_PARAM = re.compile(r"[?#&;]([^=&#?;\s\"'<>]{1,128})=([^&#;\s\"'<>]*)")
# An XML element's (local) name, then its text up to the next tag, or its CDATA section's
# content (either possibly cut off by the capture cap): `<wsse:Password>…</wsse:Password>`.
_XML_ELEMENT = re.compile(
    r"<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]{0,127})(?:\s[^<>]*)?>"
    r"(?:<!\[CDATA\[((?:[^\]]|\](?!\]>))*)|([^<]*))"
)

Report = Callable[[str, str], None]
# a header as stored: [name, value], its redactions as (field suffix, kind), its msgpack
StoredHeader = tuple[list[str], tuple[tuple[str, str], ...], bytes]
# a header list as stored: its msgpack (an array of [name, value]), its redactions
StoredHeaders = tuple[bytes, tuple[tuple[str, str], ...]]
Encoder = Callable[[Any], bytes]


# Separators a field name may use between its words: `api-key`, `user[password]`,
# `user.password`, `password[]` all read as words joined by `_`.
_NAME_SEPARATORS = re.compile(r"[-.\[\]\s]+")


def _norm(name: str) -> str:
    return _NAME_SEPARATORS.sub("_", name.strip().lower()).strip("_")


def _is_redacted(value: str) -> bool:
    return MARKER.fullmatch(value) is not None


def _json_name(name: str) -> str:
    """A quoted JSON name as the application reads it (`pass\\u0077ord` is `password`)."""
    if "\\" not in name:
        return name
    try:
        decoded = json.loads(f'"{name}"')
    except ValueError:
        return name
    return decoded if isinstance(decoded, str) else name


def json_text_pairs(text: str) -> Iterator[tuple[re.Match[str], str, str]]:
    """Each JSON-looking pair of `text`: its match, the name as read, the value as written."""
    for match in _JSON_PAIR.finditer(text):
        value = match.group(2) if match.group(3) is None else match.group(3)
        yield match, _json_name(match.group(1)), value


def multipart_fields(text: str) -> Iterator[tuple[str, int, int]]:
    """Each multipart form field of `text`: its name and its value's span (to the next
    boundary line, or the end of a body the capture cap cut)."""
    if "isposition" not in text and "ISPOSITION" not in text:
        return  # the common case: no part headers (the pattern ignores case)
    # Each search starts past the previous one's end: linear in the text, whatever it holds.
    position = 0
    while (head := _PART_HEAD.search(text, position)) is not None:
        name = _PART_NAME.search(head.group(0))
        if name is None:
            position = head.end()
            continue
        blank = _BLANK_LINE.search(text, head.end())
        if blank is None:
            return  # no value follows any header from here on
        start = blank.end()
        end_match = _PART_END.search(text, start)
        end = end_match.start() if end_match is not None else len(text)
        yield name.group(1), start, end
        position = max(end, start)


def url_params(text: str) -> Iterator[tuple[str, int, int]]:
    """Each URL parameter of `text` with a value: its name (percent-decoded) and the
    value's span."""
    if "=" not in text:
        return
    for match in _URL_PARAM.finditer(text):
        start, end = match.span(2)
        if start < end:
            yield unquote_plus(match.group(1)), start, end


def xml_elements(text: str) -> Iterator[tuple[str, int, int]]:
    """Each XML element of `text` with text of its own: its local name and that text's
    span (whitespace-only text is not a value)."""
    if "<" not in text:
        return
    for match in _XML_ELEMENT.finditer(text):
        group = 2 if match.group(2) is not None else 3
        start, end = match.span(group)
        if text[start:end].strip():
            yield match.group(1), start, end


def json_document(text: str) -> Any:
    """`text` parsed as a JSON document the redactor walks, or `NOT_JSON` when it does not
    parse or is nested deeper than `audit.record.MAX_DEPTH` (then it is redacted as text)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return NOT_JSON
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return doc  # the common case: too few brackets to nest that deep
    # The walk recurses: a document nested deeper than a record may is redacted as text.
    return NOT_JSON if too_deep(doc) else doc


NOT_JSON = object()


def _token_like(text: str) -> bool:
    """What the walk redacts in a string: a JWT, or a bearer/basic/token credential.

    BEARER needs a word, whitespace and 8 token characters (at least 14 characters), with
    whitespace between: a shorter string, or one that `split` cannot cut in two (no inner
    whitespace, by the same definition `\\s` uses), never matches.
    """
    if "eyJ" in text:
        return True
    if len(text) < _SHORTEST_CREDENTIAL:
        return False
    return len(text.split(None, 1)) > 1 and BEARER.search(text) is not None


_SHORTEST_CREDENTIAL = len("basic ") + 8


class Denylist:
    """Field and header names whose values are secrets."""

    def __init__(
        self, fields: Iterable[str] = DEFAULT_FIELDS, headers: Iterable[str] = DEFAULT_HEADERS
    ) -> None:
        self.fields = frozenset(_norm(f) for f in fields)
        self.headers = frozenset(h.strip().lower() for h in headers)
        names = "|".join(sorted((re.escape(f) for f in self.fields), key=len, reverse=True))
        self._pattern = re.compile(rf"(?:{names})(?:_.*)?|.*_(?:{names})", re.DOTALL)
        self._known: dict[str, bool] = {}  # record field names repeat: judge each once

    def field(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            known = self._pattern.fullmatch(_norm(name)) is not None
            if len(self._known) < 4096:
                self._known[name] = known
        return known

    def header(self, name: str) -> bool:
        """Whether a header's whole value is a secret: a listed header, or one named like a
        denylisted field (`X-Auth-Token`, `Private-Token`, `x_api_key`)."""
        key = name.strip().lower()
        return key in self.headers or self.field(key)


class Redactor:
    """Replaces secrets in record bodies by keyed hashes and lists each replacement."""

    def __init__(
        self,
        key: bytes,
        key_id: str = "default",
        *,
        fields: Iterable[str] = (),
        headers: Iterable[str] = (),
    ) -> None:
        if len(key) < 16:
            raise ValueError("a redaction key needs at least 16 bytes")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key_id):
            raise ValueError(f"bad redaction key id {key_id!r}")
        self._key = key
        self.key_id = key_id
        self.denylist = Denylist(DEFAULT_FIELDS | set(fields), DEFAULT_HEADERS | set(headers))
        # (name, value) -> that header as stored, and its redactions as (field suffix, kind):
        # see `header_pair`. Both memos are keyed by `_memo_key` digests.
        self._pairs: dict[bytes, StoredHeader] = {}
        # header lists -> as stored: see `header_list`
        self._lists: dict[bytes, StoredHeaders] = {}
        # Keys the memos' digests (see `_memo_key`): a keyed hash, copied for each digest
        # (cheaper than keying a new one).
        self._memo_hash = hashlib.blake2b(key=os.urandom(32), digest_size=32)

    def hash(self, secret: str) -> str:
        digest = hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"[redacted:hmac-sha256:{self.key_id}:{digest.hexdigest()[:32]}]"

    def scrub(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted deep copy of `body`, with `gateway.redactions` listing each redaction."""
        listed: list[dict[str, str]] = []
        out = self._walk_all(self._parts(body, listed), listed)
        return _listing(out, listed)

    def scrub_encoded(self, body: Mapping[str, Any], encode: Encoder) -> bytes:
        """`encode(self.scrub(body))`, without walking fields that cannot hold a secret."""
        listed: list[dict[str, str]] = []
        parts = self._parts(body, listed)
        if type(body) is HttpRecord and body.keys() <= HTTP_RECORD_KEYS:
            # The builder's own record: only its untrusted text can hold a token.
            self._untrusted_text(parts, listed)
        elif self._walk_would_change(parts):
            # SECURITY: `_walk_would_change` asks exactly the walk's questions; on any
            # doubt the record gets the full walk, as `scrub` would give it.
            parts = self._walk_all(parts, listed)
        return encode(_listing(parts, listed))

    def _untrusted_text(self, body: dict[str, Any], listed: list[dict[str, str]]) -> None:
        """Tokens in the UNTRUSTED_TEXT fields of an HttpRecord's copy, replaced in place.

        Maps on the way to a replaced field are copied first (they may be the input's).
        """
        for path, names in UNTRUSTED_TEXT:
            parent: Any = body
            for step in path:
                parent = parent.get(step) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue
            for name in names:
                text = parent.get(name)
                if not isinstance(text, str) or not _token_like(text):
                    continue
                target = body
                for step in path:
                    target[step] = target = dict(target[step])
                where = ".".join((*path, name))
                target[name] = self._tokens(
                    text, where, lambda field, kind: listed.append({"field": field, "kind": kind})
                )
                parent = target

    def _parts(self, body: Mapping[str, Any], listed: list[dict[str, str]]) -> dict[str, Any]:
        """A copy of `body` whose headers, query and captured bodies are redacted.

        Only the maps on the way to those parts are copied: the input stays intact.
        """

        def note(field: str, kind: str) -> None:
            listed.append({"field": field, "kind": kind})

        out: dict[str, Any] = dict(body)
        http = out.get("http")
        if isinstance(http, dict):
            out["http"] = http = dict(http)
            for side in ("request", "response"):
                part = http.get(side)
                if not isinstance(part, dict):
                    continue
                http[side] = part = dict(part)
                if isinstance(part.get("headers"), list):
                    part["headers"] = self._headers(part["headers"], f"http.{side}.headers", note)
                if isinstance(part.get("body"), dict):
                    part["body"] = dict(part["body"])
                    self._body(part["body"], f"http.{side}.body.content", note)
        url = out.get("url")
        if isinstance(url, dict) and isinstance(url.get("query"), str):
            out["url"] = url = dict(url)
            url["query"] = self._query(url["query"], "url.query", note)
        return out

    def _walk_would_change(self, value: Any) -> bool:
        """Whether `_walk` would replace anything in `value` (it reads, never copies)."""
        field = self.denylist.field
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if _token_like(item):
                    return True
            elif isinstance(item, dict):
                for key, inner in item.items():
                    if (
                        inner is not None
                        and isinstance(key, str)
                        and field(key)
                        and not isinstance(inner, bool)
                        and not (isinstance(inner, str) and _is_redacted(inner))
                    ):
                        return True
                    if isinstance(inner, str):
                        if _token_like(inner):
                            return True
                    elif isinstance(inner, dict | list | tuple):
                        stack.append(inner)
            elif isinstance(item, list | tuple):
                stack.extend(item)
        return False

    def _walk_all(self, body: dict[str, Any], listed: list[dict[str, str]]) -> dict[str, Any]:
        """Every map, list and string of `body`, copied as it goes: the input stays intact."""

        def note(field: str, kind: str) -> None:
            listed.append({"field": field, "kind": kind})

        return {key: self._walk(item, "", key, note) for key, item in body.items()}

    # -- the parts ---------------------------------------------------------------------
    def _headers(self, headers: list[Any], where: str, note: Report) -> list[Any]:
        out = []
        for pair in headers:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], str)
            ):
                out.append(pair)
                continue
            name, value = pair
            lower = name.lower()
            key = lower.strip()
            # SECURITY: a header named like a denylisted field (`X-Auth-Token`,
            # `Private-Token`, `x_api_key`) holds a secret as surely as a listed one.
            secret = self.denylist.header(key)
            if key not in _SPECIAL_HEADERS and not secret:
                # The common case: no secret by name; any header may still carry a token
                # (the gateway's own assertion, for one), or a URL with one in its query
                # or fragment (`Location`, `Referer`, `Link`).
                if "=" in value:
                    value = self._spans(value, url_params(value), f"{where}.{lower}", note)
                out.append([self._tokens(name, where, note), self._tokens(value, where, note)])
                continue
            if lower == "cookie":
                value = "; ".join(self._cookie(c) for c in value.split(";"))
            elif lower == "set-cookie":
                first, sep, attrs = value.partition(";")
                value = self._cookie(first) + sep + attrs
            elif secret and not _is_redacted(value):
                value = self.hash(value)
            else:
                # Any header may carry a token (the gateway's own assertion, for one).
                out.append([self._tokens(name, where, note), self._tokens(value, where, note)])
                continue
            note(f"{where}.{lower}", "header")
            out.append([self._tokens(name, where, note), self._tokens(value, where, note)])
        return out

    def header_pair(self, name: str, value: str) -> StoredHeader:
        """One header as `_headers` stores it, its redactions, and its msgpack bytes.

        Redactions are (field suffix, kind): a redaction's field is the headers' field
        (`http.request.headers`) plus its suffix.
        Remembered per (name, value): a proxied request's headers recur request after
        request (the gateway's own assertion, for a minute at a time). The result depends
        only on the pair and on this redactor (its key and lists never change), so the
        memo is keyed by the pair (see `_memo_key`: a keyed digest, never the pair itself)
        and kept by the redactor. Bounded: short pairs only, at most `PAIR_MEMO` of them
        (then it starts again), so that hostile distinct headers cannot grow it.
        """
        key = self._memo_key((name, value))
        found = self._pairs.get(key)
        if found is not None:
            return found
        listed: list[tuple[str, str]] = []
        where = "\x00"  # a field no header name can make: marks the headers' own field
        stored = self._headers(
            [[name, value]], where, lambda field, kind: listed.append((field[1:], kind))
        )[0]
        found = stored, tuple(listed), body_packer().pack(stored)
        if len(name) + len(value) <= PAIR_MEMO_TEXT:
            if len(self._pairs) >= PAIR_MEMO:
                self._pairs.clear()
            self._pairs[key] = found
        return found

    def _memo_key(self, headers: tuple[Any, ...]) -> bytes:
        """The header memos' key for `headers`: a digest under a key of this redactor's own.

        SECURITY: a header may hold a secret (a cookie, a credential, a token); kept as the
        key of a memo it would outlive its request. Its digest under a random key that
        never leaves the process reveals nothing of it, and equal headers still meet.
        """
        packed = body_packer().pack(headers)
        after_packing(len(packed))
        digest = self._memo_hash.copy()
        digest.update(packed)
        return digest.digest()

    def header_list(
        self, pairs: tuple[Any, ...], check: Callable[[Any, Any], object]
    ) -> StoredHeaders:
        """A header list as `_headers` stores it, as msgpack bytes, and its redactions.

        `pairs` holds (name, value) pairs, as tuples or lists (the memo's key packs both
        the same, and the builder reads both the same).
        `check(name, value)` raises for a pair a record cannot hold (it is called for
        pairs not yet remembered). Remembered per list, as `header_pair` remembers pairs
        and on the same terms (a keyed digest for a key, `LIST_MEMO_TEXT` of text at most;
        at most `LIST_MEMO` lists): a client's requests carry the same headers, request
        after request.
        """
        try:
            key = self._memo_key(pairs)
        except (TypeError, ValueError, OverflowError):
            for name, value in pairs:
                check(name, value)  # raises for the pair a record cannot hold, if one does
            raise
        found = self._lists.get(key)
        if found is not None:
            return found
        packed = [array_header(len(pairs))]
        listed: list[tuple[str, str]] = []
        size = 0
        for name, value in pairs:
            check(name, value)
            _, redactions, stored = self.header_pair(name, value)
            packed.append(stored)
            listed.extend(redactions)
            size += len(name) + len(value)
        found = b"".join(packed), tuple(listed)
        if size <= LIST_MEMO_TEXT:
            if len(self._lists) >= LIST_MEMO:
                self._lists.clear()
            self._lists[key] = found
        return found

    def _cookie(self, item: str) -> str:
        text = item.strip()
        name, sep, value = text.partition("=")
        if not sep:
            # SECURITY: a cookie without a name is all value (browsers send it so).
            return text if not text or _is_redacted(text) else self.hash(text)
        return f"{name}={value if _is_redacted(value) else self.hash(value)}"

    def _query(self, query: str, where: str, note: Report) -> str:
        parts = []
        for item in query.split("&"):
            name, sep, value = item.partition("=")
            if sep and self.denylist.field(unquote_plus(name)) and not _is_redacted(value):
                parts.append(f"{name}={self.hash(unquote_plus(value))}")
                note(f"{where}:{unquote_plus(name)}", "field")
            else:
                parts.append(item)
        joined = "&".join(parts)
        # Pairs after `;` (some servers split on it too), and URLs inside values.
        return self._spans(joined, url_params(joined), where, note)

    def _body(self, body: dict[str, Any], where: str, note: Report) -> None:
        content = body.get("content")
        if not isinstance(content, str) or body.get("encoding") == "base64":
            return
        mime = str(body.get("mime_type", "")).split(";")[0].strip().lower()
        if mime == "application/json" or mime.endswith("+json"):
            doc = json_document(content)
            if doc is not NOT_JSON:  # else truncated, mislabelled or too deep: text below
                walked = self._walk(doc, "", where, note)
                if "=" in content or "<" in content or "\\" in content:
                    # Without these (nor an escape that could make them), no string of
                    # the document can hold what `_text` redacts.
                    walked = self._json_strings(walked, where, note)
                body["content"] = json.dumps(
                    walked,
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
                return
        # SECURITY: the sender chooses the label, and an application may read a body by
        # its own rules: any other text has its JSON-looking pairs, XML elements,
        # multipart fields, form pairs and URL parameters redacted (tokens by the walk),
        # whatever its Content-Type says.
        body["content"] = self._text(content, where, note)

    def _text(self, text: str, where: str, note: Report) -> str:
        """Free text's secrets: JSON-looking pairs, XML elements, multipart fields, form
        pairs, URL parameters (`?token=…`, `#access_token=…`)."""
        text = self._json_text(text, where, note)
        text = self._spans(text, xml_elements(text), where, note)
        if "=" not in text:
            return text  # neither a multipart field nor a form pair
        text = self._spans(text, multipart_fields(text), where, note)
        return self._query(text, where, note)  # form pairs, then URL parameters

    def _json_strings(self, value: Any, where: str, note: Report) -> Any:
        """A walked JSON document with `_text` applied to each string in it.

        SECURITY: a string value may itself be a form (`a=1&password=…`), a URL with a
        token in its query, or JSON text: applications decode such strings too.
        """
        if isinstance(value, str):
            if '"' in value or "=" in value or "<" in value:
                return self._text(value, where, note)
            return value
        if isinstance(value, dict):
            return {key: self._json_strings(item, where, note) for key, item in value.items()}
        if isinstance(value, list):
            return [self._json_strings(item, where, note) for item in value]
        return value

    def _json_text(self, text: str, where: str, note: Report) -> str:
        if '"' not in text:
            return text
        out: list[str] = []
        done = 0
        for match, name, value in json_text_pairs(text):
            if not self.denylist.field(name) or _is_redacted(value):
                continue
            note(f"{where}:{name}", "field")
            # A string the capture cap cut before its closing quote stays unclosed; a
            # number becomes a quoted marker.
            closed = match.group(3) is not None or match.end(2) < match.end()
            out.append(text[done : match.start()])
            out.append(f'"{match.group(1)}":"{self.hash(value)}' + ('"' if closed else ""))
            done = match.end()
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)

    def _spans(
        self, text: str, fields: Iterable[tuple[str, int, int]], where: str, note: Report
    ) -> str:
        """`text` with the value spans of denylisted `fields` (name, start, end) replaced."""
        out: list[str] = []
        done = 0
        for name, start, end in fields:
            value = text[start:end]
            if not self.denylist.field(name) or _is_redacted(value):
                continue
            note(f"{where}:{name}", "field")
            out.append(text[done:start])
            out.append(self.hash(value))
            done = end
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)

    def _walk(self, value: Any, parent: str, name: object, note: Report) -> Any:
        """A copy of `value` (found at `parent`.`name`) with secrets replaced."""
        if isinstance(value, str):
            if not _token_like(value):
                return value  # the common case: nothing token-like, no path string built
            return self._tokens(value, f"{parent}.{name}" if parent else str(name), note)
        if isinstance(value, dict):
            where = f"{parent}.{name}" if parent else str(name)
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if (
                    isinstance(key, str)
                    and item is not None
                    and not isinstance(item, bool)
                    and self.denylist.field(key)
                    and not (isinstance(item, str) and _is_redacted(item))
                ):
                    text = item if isinstance(item, str) else json.dumps(item, default=str)
                    out[key] = self.hash(text)
                    note(f"{where}.{key}" if where else str(key), "field")
                else:
                    out[key] = self._walk(item, where, key, note)
            return out
        if isinstance(value, list | tuple):
            return [self._walk(item, parent, name, note) for item in value]
        return value

    def _tokens(self, text: str, where: str, note: Report) -> str:
        if not _token_like(text):
            return text

        def jwt(match: re.Match[str]) -> str:
            note(where, "jwt")
            return self.hash(match.group(0))

        def bearer(match: re.Match[str]) -> str:
            if _is_redacted(match.group(2)) or match.group(2).startswith("[redacted"):
                return match.group(0)
            note(where, "bearer")
            return f"{match.group(1)} {self.hash(match.group(2))}"

        return BEARER.sub(bearer, JWT.sub(jwt, text))


_SPECIAL_HEADERS = frozenset({"cookie", "set-cookie"})
PAIR_MEMO = 512  # headers remembered by `Redactor.header_pair`
PAIR_MEMO_TEXT = 1024  # the longest name + value it remembers
LIST_MEMO = 256  # header lists remembered by `Redactor.header_list`
LIST_MEMO_TEXT = 4096  # the most text (names and values) a remembered list has


def _json_document(mime: str, content: str) -> Any:
    """A stored body as the JSON document the redactor walked (labelled JSON, and
    `json_document` takes it), or `NOT_JSON`."""
    if not (mime == "application/json" or mime.endswith("+json")):
        return NOT_JSON
    return json_document(content)


def _listing(body: dict[str, Any], listed: list[dict[str, str]]) -> dict[str, Any]:
    """`body` with `gateway.redactions` set to `listed` (the gateway map copied first)."""
    if listed:
        if "gateway" not in body:
            body["gateway"] = {"redactions": listed}
        elif isinstance(body["gateway"], dict):
            body["gateway"] = {**body["gateway"], "redactions": listed}
    return body


def find_plaintext_secrets(body: Any, denylist: Denylist | None = None) -> list[str]:
    """Every field of a stored body where a denylisted secret survived in plain text."""
    rules = denylist or Denylist()
    found: list[str] = []

    def text_ok(text: str) -> bool:
        stripped = MARKER.sub("", text)
        if JWT.search(stripped):
            return False
        return not any(not _is_redacted(m.group(2)) for m in BEARER.finditer(text))

    def query(text: str, where: str) -> None:
        """What `Redactor._query` redacts: form pairs, then URL parameters."""
        for item in text.split("&"):
            name, sep, value = item.partition("=")
            if sep and rules.field(unquote_plus(name)) and not _is_redacted(value):
                found.append(f"{where}:{unquote_plus(name)}")
        urls(text, where)

    def text_pairs(text: str, where: str) -> None:
        """What `Redactor._text` redacts: JSON pairs, XML elements, multipart fields, forms."""
        for _, name, value in json_text_pairs(text):
            if rules.field(name) and not _is_redacted(value):
                found.append(f"{where}:{name}")
        for name, start, end in [*xml_elements(text), *multipart_fields(text)]:
            if rules.field(name) and not _is_redacted(text[start:end]):
                found.append(f"{where}:{name}")
        query(text, where)

    def urls(text: str, where: str) -> None:
        for name, start, end in url_params(text):
            if rules.field(name) and not _is_redacted(text[start:end]):
                found.append(f"{where}:{name}")

    def json_strings(value: Any, where: str) -> None:
        """What `Redactor._json_strings` redacts: `text_pairs` in each string."""
        if isinstance(value, str):
            text_pairs(value, where)
        elif isinstance(value, dict):
            for item in value.values():
                json_strings(item, where)
        elif isinstance(value, list):
            for item in value:
                json_strings(item, where)

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if (
                    isinstance(key, str)
                    and rules.field(key)
                    and item is not None
                    and not isinstance(item, bool)
                    and not (isinstance(item, str) and _is_redacted(item))
                ):
                    found.append(path)
                else:
                    walk(item, path)
        elif isinstance(value, list):
            for item in value:
                walk(item, where)
        elif isinstance(value, str) and not text_ok(value):
            found.append(where)

    walk(body, "")
    if not isinstance(body, dict):
        return found
    http = body.get("http")
    if isinstance(http, dict):
        for side in ("request", "response"):
            part = http.get(side)
            if not isinstance(part, dict):
                continue
            for pair in part.get("headers") or []:
                if not (isinstance(pair, list) and len(pair) == 2):
                    continue
                name, value = str(pair[0]).lower(), str(pair[1])
                if name in ("cookie", "set-cookie"):
                    cookies = value.split(";") if name == "cookie" else value.split(";")[:1]
                    for cookie in cookies:
                        text = cookie.strip()
                        _, sep, val = text.partition("=")
                        secret = val if sep else text
                        if (sep or secret) and not _is_redacted(secret):
                            found.append(f"http.{side}.headers.{name}")
                elif rules.header(name):
                    if not _is_redacted(value):
                        found.append(f"http.{side}.headers.{name}")
                else:
                    urls(value, f"http.{side}.headers.{name}")
            content = (
                part.get("body", {}).get("content") if isinstance(part.get("body"), dict) else None
            )
            if isinstance(content, str) and part["body"].get("encoding") != "base64":
                where = f"http.{side}.body.content"
                mime = str(part["body"].get("mime_type", "")).split(";")[0].strip().lower()
                doc = _json_document(mime, content)
                if doc is NOT_JSON:
                    text_pairs(content, where)  # whatever the label says
                else:
                    walk(doc, where)
                    json_strings(doc, where)
    url = body.get("url")
    if isinstance(url, dict) and isinstance(url.get("query"), str):
        query(url["query"], "url.query")
    return sorted(set(found))
