"""Request-path normalisation: the ONE function whose result is both judged and forwarded.

`normalise(raw_path, ...)` takes the path exactly as received (percent-encoded, no query)
and either refuses it (`PathRejected`, the gateway answers 400) or returns a
`NormalisedPath` whose `forwarded` string is what the policy judges and what the upstream
receives, byte for byte:

    >>> normalise("/api/%7Euser/./x//y/../z").forwarded
    '/api/~user/x/z'

Refused always: not starting with `/`, over-long, `?`/`#`, raw backslash, control
characters (raw or encoded, `%00` included), invalid percent-escapes, bytes that are not
valid UTF-8 once decoded (overlong `%C0%AE`, surrogates), dot segments carrying `;`
parameters (`..;x`). Refused unless the route allows encoded slashes: `%2F`, `%5C`.

Resolved before judging: dot segments (also encoded, `%2e%2e`), duplicate slashes.
Representation: percent-encoded unreserved characters are decoded, remaining escapes get
upper-case hex, characters not allowed raw in a path (non-ASCII, space, `"` ...) are
percent-encoded. Case is never changed in `forwarded`.

Upstream servers read one path in different ways: some cut `;parameters` from each
segment (Java servlet containers), some decode `%2F` to `/`, some fold Unicode
compatibility forms (NFKC: fullwidth `／` is `/`). `match_keys` holds every such reading
(decoded text, case folded where the route says); a request is allowed only when every
reading is allowed, so no reading an upstream might pick slips past a deny rule.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from itertools import product
from typing import TypeVar
from urllib.parse import unquote

from policies.errors import PathRejected

_T = TypeVar("_T")

MAX_PATH_LENGTH = 4096

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters RFC 3986 allows raw inside a path segment besides unreserved ones
# (sub-delims, ":" and "@"); their encoded and raw forms mean different things, so each
# keeps the form it arrived in.
_RAW_ALLOWED = frozenset(b"!$&'()*+,;=:@")
_HEX = frozenset("0123456789ABCDEFabcdef")
_SLASHES = frozenset(b"/\\")


@dataclass(frozen=True)
class NormalisedPath:
    """A path fit to judge and forward.

    `forwarded`: the canonical percent-encoded path sent upstream (and logged, audited).
    `match_key`: the decoded path rules are matched against (case folded if the route says).
    `match_keys`: every reading an upstream might give the path, `match_key` first.
    """

    forwarded: str
    match_key: str
    match_keys: tuple[str, ...]


@dataclass(frozen=True)
class _Segment:
    forwarded: str
    octets: tuple[tuple[int, bool], ...]  # (byte, arrived percent-encoded)
    text: str  # decoded; an encoded slash or backslash is shown as %2F / %5C
    has_params: bool
    has_encoded_slash: bool


def normalise(
    raw_path: str,
    *,
    allow_encoded_slashes: bool = False,
    case_insensitive: bool = False,
    max_length: int = MAX_PATH_LENGTH,
) -> NormalisedPath:
    """Refuse or normalise one raw request path; see the module docstring."""
    if len(raw_path) <= REMEMBERED_PATH_CHARS and max_length == MAX_PATH_LENGTH:
        return _remembered(raw_path, allow_encoded_slashes, case_insensitive)
    return _normalise(raw_path, allow_encoded_slashes, case_insensitive, max_length)


# An app's requests repeat a few paths, and normalising is a pure function of its
# arguments, so results are remembered. The key is every argument the result depends
# on (the raw path exactly as received and both route options; only the default length
# limit is remembered) and the value is frozen, so a remembered answer is the computed
# one. Bounded twice: at most REMEMBERED_PATHS entries, each for a raw path of at most
# REMEMBERED_PATH_CHARS characters (a few kB each with its readings), so distinct
# hostile paths only evict each other. Refusals raise and are never remembered.
REMEMBERED_PATHS = 2048
REMEMBERED_PATH_CHARS = 512


def _normalise(
    raw_path: str, allow_encoded_slashes: bool, case_insensitive: bool, max_length: int
) -> NormalisedPath:
    if len(raw_path) > max_length:
        raise PathRejected(f"path longer than {max_length} characters")
    if not raw_path.startswith("/"):
        raise PathRejected("path must start with '/'")
    segments = [_parse_segment(s, allow_encoded_slashes) for s in raw_path[1:].split("/")]
    kept, trailing = _resolve([s.text for s in segments], segments)
    forwarded = "/" + "/".join(s.forwarded for s in kept) + ("/" if trailing and kept else "")
    if len(forwarded) > max_length:
        raise PathRejected(f"path longer than {max_length} characters once normalised")
    keys = _readings(kept, trailing)
    if case_insensitive:
        keys = [k.casefold() for k in keys]
    unique = tuple(dict.fromkeys(keys))
    return NormalisedPath(forwarded=forwarded, match_key=unique[0], match_keys=unique)


@functools.lru_cache(maxsize=REMEMBERED_PATHS)
def _remembered(
    raw_path: str, allow_encoded_slashes: bool, case_insensitive: bool
) -> NormalisedPath:
    return _normalise(raw_path, allow_encoded_slashes, case_insensitive, MAX_PATH_LENGTH)


def _parse_segment(raw: str, allow_encoded_slashes: bool) -> _Segment:
    octets: list[tuple[int, bool]] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "%":
            digits = raw[index + 1 : index + 3]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise PathRejected(f"invalid percent-escape {raw[index : index + 3]!r}")
            byte = int(digits, 16)
            if byte == 0:
                # SECURITY: NUL truncates paths in C-based upstreams.
                raise PathRejected("encoded NUL (%00) in path")
            if byte < 0x20 or byte == 0x7F:
                raise PathRejected(f"encoded control character (%{byte:02X}) in path")
            if byte in _SLASHES and not allow_encoded_slashes:
                # SECURITY: upstreams that decode %2F/%5C would see segments never judged.
                raise PathRejected(f"encoded slash or backslash (%{byte:02X}) in path")
            octets.append((byte, True))
            index += 3
            continue
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            raise PathRejected(f"control character (U+{code:04X}) in path")
        if char == "\\":
            # SECURITY: some upstreams read a backslash as a segment separator.
            raise PathRejected("backslash in path")
        if char in "?#":
            raise PathRejected(f"{char!r} in path (the query is not part of the path)")
        if code < 0x80:
            octets.append((code, code not in _UNRESERVED and code not in _RAW_ALLOWED))
        else:
            try:
                encoded = char.encode("utf-8")
            except UnicodeEncodeError:
                raise PathRejected("invalid UTF-8 in path") from None
            octets.extend((byte, True) for byte in encoded)
        index += 1
    text = _decode(octets, cut_params=False, split_slashes=False)
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise PathRejected("encoded control character in path")
    has_params = any(byte == ord(";") and not encoded for byte, encoded in octets)
    if has_params and _decode(octets, cut_params=True, split_slashes=False) in (".", ".."):
        # SECURITY: `..;x` is a parent reference to servlet containers, a name to others.
        raise PathRejected("dot segment with ';' parameters in path")
    forwarded = "".join(
        chr(byte) if byte in _UNRESERVED or not encoded else f"%{byte:02X}"
        for byte, encoded in octets
    )
    return _Segment(
        forwarded=forwarded,
        octets=tuple(octets),
        text=text,
        has_params=has_params,
        has_encoded_slash=any(byte in _SLASHES and encoded for byte, encoded in octets),
    )


def _decode(
    octets: list[tuple[int, bool]] | tuple[tuple[int, bool], ...],
    *,
    cut_params: bool,
    split_slashes: bool,
) -> str:
    """Decoded text of one segment: `;parameters` cut or kept, encoded slashes as `/` or
    shown as `%2F`/`%5C` (so they can never pose as a separator)."""
    pieces: list[str] = []
    run = bytearray()
    cutting = False  # inside `;parameters`, which last until the segment ends
    for byte, encoded in octets:
        if encoded and byte in _SLASHES:
            if split_slashes:
                cutting = False  # a decoded slash starts a new segment
            elif cutting:
                continue
            pieces.append(_utf8(run))
            run.clear()
            pieces.append("/" if split_slashes else f"%{byte:02X}")
            continue
        if cut_params and byte == ord(";") and not encoded:
            cutting = True
        if not cutting:
            run.append(byte)
    pieces.append(_utf8(run))
    return "".join(pieces)


def _utf8(data: bytes | bytearray) -> str:
    try:
        # SECURITY: strict decoding refuses overlong forms (%C0%AE is not '.') and surrogates.
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRejected("invalid UTF-8 in path (malformed or overlong)") from None


def _resolve(texts: list[str], items: list[_T]) -> tuple[list[_T], bool]:
    """RFC 3986 dot-segment removal plus collapsing empty segments; `..` stops at the root.
    Returns the kept items and whether the path ends with a slash."""
    kept: list[_T] = []
    trailing = False
    for index, (text, item) in enumerate(zip(texts, items, strict=True)):
        last = index == len(texts) - 1
        if text in ("", ".", ".."):
            if text == ".." and kept:
                kept.pop()
            trailing = last
            continue
        kept.append(item)
        trailing = False
    return kept, trailing


def _resolve_text(path: str) -> str:
    """`_resolve` for a decoded path string (a reading built from decoded segments)."""
    parts = path.split("/")[1:]
    kept, trailing = _resolve(parts, parts)
    return "/" + "/".join(kept) + ("/" if trailing and kept else "")


def _readings(kept: list[_Segment], trailing: bool) -> list[str]:
    """The decoded path as each kind of upstream may read it; the plain reading first."""
    tail = "/" if trailing and kept else ""
    plain = "/" + "/".join(s.text for s in kept) + tail
    readings = [plain]
    cut_options = (False, True) if any(s.has_params for s in kept) else (False,)
    split_options = (False, True) if any(s.has_encoded_slash for s in kept) else (False,)
    for cut, split in product(cut_options, split_options):
        if cut or split:
            joined = "/" + "/".join(
                _decode(s.octets, cut_params=cut, split_slashes=split) for s in kept
            )
            readings.append(_resolve_text(joined + tail))
    for reading in list(readings):
        folded = unicodedata.normalize("NFKC", reading)
        if folded != reading:
            readings.extend(_text_readings(folded))
    return readings


def _text_readings(text: str) -> list[str]:
    """Readings of a decoded path string: as is, `;parameters` cut, encoded slashes (shown
    as %2F / %5C) taken as slashes, and both (slashes first: they start new segments)."""
    plain = _resolve_text(text)
    split = _resolve_text(plain.replace("%2F", "/").replace("%5C", "/").replace("\\", "/"))
    readings = [plain, split]
    for reading in (plain, split):
        if ";" in reading:
            readings.append(_resolve_text("/".join(s.split(";", 1)[0] for s in reading.split("/"))))
    return readings


def readings_of_key(key: str, *, case_insensitive: bool = False) -> tuple[str, ...]:
    """Every reading of an already-decoded path (a match key, or a path written by hand).

    Used when a caller judges a plain string: dot segments and empty segments are resolved
    again and the `;`-cut, slash-decoded, percent-decoded and NFKC readings are added, so
    a string judged directly is never judged more leniently than its normalised form.
    """
    if not key.startswith("/"):
        raise PathRejected("path must start with '/'")
    if len(key) > MAX_PATH_LENGTH:
        raise PathRejected(f"path longer than {MAX_PATH_LENGTH} characters")
    if any(unicodedata.category(c) == "Cc" for c in key):
        raise PathRejected("control character in path")
    readings = _text_readings(key)
    if "%" in key:
        # The string may still be percent-encoded (a forwarded path) or an upstream may
        # decode twice: judge the decoded reading as well.
        readings.extend(_text_readings(unquote(key, errors="replace")))
    for reading in list(readings):
        folded = unicodedata.normalize("NFKC", reading)
        if folded != reading:
            readings.extend(_text_readings(folded))
    if case_insensitive:
        readings = [r.casefold() for r in readings]
    return tuple(dict.fromkeys(readings))
