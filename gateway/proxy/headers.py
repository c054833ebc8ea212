"""Header rules between client, gateway and upstream: pure functions, no I/O.

Request side (DESIGN.md "Spoofing"), in this order:
1. hop-by-hop names are computed from the client's headers (the RFC 9110 list plus every
   name listed in `Connection`) BEFORE anything is added, and dropped;
2. spoofable names are dropped: any name that, lower-cased with `_` read as `-`, starts
   with `x-gateway-`, `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Original-URL`,
   `X-Rewrite-URL` and every method-override header, and the like statements other
   proxies make (`X-Original-URI`, `X-Envoy-Original-Path`, `X-Remote-User`,
   `X-Auth-Request-*`, CDN client-address headers);
3. the gateway's cookies are cut out of `Cookie`;
4. `X-Forwarded-For/Proto/Host` are rebuilt (client values kept only from trusted proxies);
5. identity headers are added last by the inject stage.

Response side: hop-by-hop dropped, `Set-Cookie` for a gateway cookie dropped and the
`Domain` of the others removed (host-only on the public host: a customer app cannot
widen a cookie to sibling routed hosts), `Location`/`Content-Location` pointing at the
upstream origin rewritten to the public origin.

    names = hop_by_hop(headers)                    # {"connection", "keep-alive", "x-foo", ...}
    out = upstream_request_headers(headers, route.request_headers)
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from gateway.cookies import is_gateway_cookie
from policies.model import HeaderEdits

Headers = Sequence[tuple[str, str]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 7.6.1 (and the RFC 2616 names proxies still see): never forwarded.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_SPOOFABLE: frozenset[str] = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-client-ip",
        "true-client-ip",
        # The same statements under other proxies' names (nginx auth_request, Envoy, IIS,
        # CDNs, auth proxies): an upstream once behind one of them may still believe them.
        "x-original-uri",
        "x-original-method",
        "x-original-host",
        "x-host",
        "x-envoy-original-path",
        "x-remote-user",
        "remote-user",
        "x-originating-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
    }
)

# Set by the gateway itself or meaningless upstream: the client's values never pass.
_REPLACED: frozenset[str] = frozenset({"host", "expect"})


def canonical(name: str) -> str:
    """A header name as spoofing checks compare it: lower-case, `_` read as `-`."""
    return name.strip().lower().replace("_", "-")


def _spoofable_key(key: str) -> bool:
    return (
        key.startswith("x-gateway-")  # SECURITY: identity is only ever the gateway's word
        or key.startswith("x-forwarded-")
        or key.startswith("x-auth-request-")  # oauth2-proxy's identity headers
        or key in _SPOOFABLE
    )


def _judge_name(name: str) -> tuple[str, bool]:
    key = canonical(name)
    return key, _spoofable_key(key)


# Every request carries mostly the same few header names, and a name's canonical form and
# spoofability are pure functions of the name as received (the only key), so both are
# remembered. Bounded: at most REMEMBERED_NAMES names of at most REMEMBERED_NAME_CHARS
# characters each; longer or rarer hostile names are judged afresh or evict each other.
REMEMBERED_NAMES = 512
REMEMBERED_NAME_CHARS = 64
_remembered_name = functools.lru_cache(maxsize=REMEMBERED_NAMES)(_judge_name)


def name_facts(name: str) -> tuple[str, bool]:
    """(canonical name, spoofable) of a header name as received."""
    if len(name) > REMEMBERED_NAME_CHARS:
        return _judge_name(name)
    return _remembered_name(name)


_CONNECTION = _judge_name("Connection")


def hop_by_hop(headers: Headers) -> frozenset[str]:
    """The hop-by-hop names of one message: the fixed list plus names listed in Connection."""
    return _hop_by_hop(headers, [name_facts(name) for name, _ in headers])


def _hop_by_hop(headers: Headers, facts: list[tuple[str, bool]]) -> frozenset[str]:
    count = facts.count(_CONNECTION)
    if not count:
        return HOP_BY_HOP  # no Connection header: only the fixed list
    if count == 1:
        values: tuple[str, ...] = (headers[facts.index(_CONNECTION)][1],)
    else:
        values = tuple(headers[i][1] for i, fact in enumerate(facts) if fact == _CONNECTION)
    if sum(map(len, values)) > REMEMBERED_CONNECTION_CHARS:
        return _listed_in_connection(values)
    return _remembered_connection(values)


def _listed_in_connection(values: tuple[str, ...]) -> frozenset[str]:
    listed = set(HOP_BY_HOP)
    for value in values:
        listed.update(canonical(token) for token in value.split(",") if token.strip())
    return frozenset(listed)


# Browsers send the same `Connection: keep-alive` on every request: the names a message's
# Connection values list are a pure function of those values (the whole key), remembered
# for at most REMEMBERED_CONNECTIONS short value lists.
REMEMBERED_CONNECTIONS = 64
REMEMBERED_CONNECTION_CHARS = 128
_remembered_connection = functools.lru_cache(maxsize=REMEMBERED_CONNECTIONS)(_listed_in_connection)


def is_spoofable(name: str) -> bool:
    """True for a client header that could impersonate the gateway's own statements."""
    return name_facts(name)[1]


def strip_gateway_cookies(values: Iterable[str]) -> str | None:
    """One `Cookie` value without the gateway's cookies; None when nothing remains."""
    kept: list[str] = []
    for value in values:
        for pair in value.split(";"):
            pair = pair.strip()
            if not pair:
                continue
            name = pair.split("=", 1)[0]
            # SECURITY: the console and app-session cookies never reach a customer app.
            if is_gateway_cookie(name):
                continue
            kept.append(pair)
    return "; ".join(kept) if kept else None


def upstream_request_headers(headers: Headers, edits: HeaderEdits) -> list[tuple[str, str]]:
    """The client's headers as they may travel upstream (identity and X-Forwarded-* not yet)."""
    facts = [name_facts(name) for name, _ in headers]
    drop = _hop_by_hop(headers, facts)  # SECURITY: computed before the gateway adds anything
    out: list[tuple[str, str]] = []
    cookies: list[str] = []
    for (name, value), (key, spoofable) in zip(headers, facts, strict=True):
        if spoofable or key in drop or key in _REPLACED:
            continue
        if key == "cookie":
            cookies.append(value)
            continue
        out.append((name, value))
    cookie = strip_gateway_cookies(cookies)
    if cookie is not None:
        out.append(("Cookie", cookie))
    return apply_edits(out, edits)


def apply_edits(headers: list[tuple[str, str]], edits: HeaderEdits) -> list[tuple[str, str]]:
    """A route's header edits: `remove` names dropped, `set` names replaced."""
    if not edits.set and not edits.remove:
        return headers
    replaced = {canonical(name) for name, _ in edits.set} | {canonical(n) for n in edits.remove}
    # SECURITY: matched as canonical names: an upstream that reads `X_Tenant` as `X-Tenant`
    # must not get a client's copy beside (or instead of) what the route set or removed.
    out = [(n, v) for n, v in headers if name_facts(n)[0] not in replaced]
    out.extend(edits.set)
    return out


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(peer: str, trusted: Sequence[IPNetwork]) -> bool:
    if not trusted:
        return False  # no trusted proxies configured: nobody's word is taken (no parsing)
    address = _address(peer)
    return address is not None and any(address in network for network in trusted)


def client_address(
    peer: str, headers: Iterable[tuple[str, str]], trusted: Sequence[IPNetwork]
) -> str:
    """The real client: the peer, unless a trusted proxy says who it forwarded for.

    X-Forwarded-For is read right to left, skipping trusted proxies; the first untrusted
    valid address is the client. Anything malformed stops the walk (fail closed: the last
    address we can vouch for is used).
    """
    if not is_trusted(peer, trusted):
        return peer
    chain: list[str] = []
    for name, value in headers:
        if name.lower() == "x-forwarded-for":
            chain.extend(part.strip() for part in value.split(","))
    client = peer
    for hop in reversed(chain):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not any(address in network for network in trusted):
            break
    return client


def forwarded_headers(
    *,
    peer: str,
    scheme: str,
    host: str,
    headers: Headers,
    trusted: Sequence[IPNetwork],
) -> list[tuple[str, str]]:
    """X-Forwarded-For/Proto/Host as the gateway states them.

    From a trusted proxy its For chain is extended and its Proto/Host kept (when well
    formed); from anyone else the client's values are ignored.
    """
    forwarded_for = peer
    proto = scheme
    forwarded_host = host
    if is_trusted(peer, trusted):
        chain: list[str] = []
        for name, value in headers:
            exact = name.lower()
            if exact == "x-forwarded-for":
                chain.extend(p.strip() for p in value.split(",") if p.strip())
            elif exact == "x-forwarded-proto" and value.strip().lower() in ("http", "https"):
                proto = value.strip().lower()
            elif exact == "x-forwarded-host" and _plain_host(value.strip()):
                forwarded_host = value.strip()
        if chain and all(_address(p) is not None for p in chain):
            forwarded_for = ", ".join([*chain, peer])
    return [
        ("X-Forwarded-For", forwarded_for),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", forwarded_host),
    ]


def _plain_host(value: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-.:[]")
    return 0 < len(value) <= 255 and set(value.lower()) <= allowed


def cookie_name(set_cookie: str) -> str:
    """The name a browser will send the cookie back under.

    A cookie set without a name (`=NAME=value`, or `=NAME`) is kept by browsers and sent
    back as its bare value, `NAME=value`: that NAME is what it will be taken for.
    """
    pair = set_cookie.split(";", 1)[0]
    name, equals, value = pair.partition("=")
    if equals and not name.strip():
        return value.split("=", 1)[0].strip()
    return name.strip()


def rewrite_set_cookie(value: str) -> str | None:
    """An upstream Set-Cookie as the client may see it; None drops it."""
    # SECURITY: a customer app must not set (or overwrite) a gateway session cookie.
    if is_gateway_cookie(cookie_name(value)):
        return None
    parts = [part for part in value.split(";")]
    kept = [parts[0]]
    for attribute in parts[1:]:
        # SECURITY: no Domain attribute: the cookie stays host-only on the public host
        # instead of reaching sibling routed hosts or naming the internal upstream.
        if attribute.split("=", 1)[0].strip().lower() == "domain":
            continue
        kept.append(attribute)
    return ";".join(kept)


def rewrite_location(value: str, *, upstream_origin: str, public_origin: str) -> str:
    """A Location pointing at the upstream origin, pointed at the public origin instead."""
    try:
        parts = urlsplit(value)
        upstream = urlsplit(upstream_origin)
        if not parts.scheme or not parts.netloc:
            return value  # relative references resolve against the public origin already
        same_host = parts.hostname == upstream.hostname
        same_port = (parts.port or _default_port(parts.scheme)) == (
            upstream.port or _default_port(upstream.scheme)
        )
    except ValueError:
        return value
    if not (same_host and same_port and parts.scheme.lower() == upstream.scheme.lower()):
        return value
    public = urlsplit(public_origin)
    return urlunsplit((public.scheme, public.netloc, parts.path, parts.query, parts.fragment))


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def downstream_response_headers(
    headers: Headers,
    edits: HeaderEdits,
    *,
    upstream_origin: str,
    public_origin: str,
) -> list[tuple[str, str]]:
    """The upstream's response headers as the client may see them."""
    drop = hop_by_hop(headers)
    out: list[tuple[str, str]] = []
    for name, value in headers:
        key = name.lower()
        if key in drop:
            continue
        if key == "set-cookie":
            rewritten = rewrite_set_cookie(value)
            if rewritten is not None:
                out.append((name, rewritten))
            continue
        if key in ("location", "content-location"):
            value = rewrite_location(
                value, upstream_origin=upstream_origin, public_origin=public_origin
            )
        out.append((name, value))
    return apply_edits(out, edits)
