"""The route stage: the request as received -> the route, and the one path judged and forwarded.

It refuses, before anything else looks at the request:
- header sections over the gateway's limits (431) and over-long request lines (414);
- `CONNECT` (405, `Allow`), asterisk-form and absolute-form targets for another
  authority than `Host` or an unrouted one (400: no open proxy);
- missing, repeated or malformed `Host` (400), SNI naming another host (421);
- Content-Length / Transfer-Encoding conflicts (400: request smuggling);
- a websocket upgrade asked by any method but GET (400: it would reach the upstream as GET),
  or with a malformed handshake (400, before the upstream is asked);
- unknown hosts (404), paths the normaliser refuses (400);
- every `/.gateway/*` path but the routed endpoints (404); `auth` and `logout` are
  answered here by their handlers and never forwarded;
- requests a browser sent from a page of another org's routed host, or of no routed host
  (`Origin`, 403 `cross_origin`): sibling hosts share one site, so cookies do not tell;
  likewise subresource loads (`<img>`, `<script>`, no `Origin`) a browser marks
  `Sec-Fetch-Site: same-site|cross-site` unless their `Referer` is such a page.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from aiohttp import web

from gateway.appkeys import CONFIG, POLICIES, ROUTED_ENDPOINTS
from gateway.denials import (
    Denial,
    bad_request,
    headers_too_large,
    method_not_allowed,
    not_found,
)
from gateway.flow import Flow
from gateway.proxy.sni import misdirected_to
from gateway.stages.policy import asks_for_websocket
from policies.errors import PathRejected
from policies.model import Route
from policies.paths import normalise

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
GATEWAY_PREFIX = "/.gateway"
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_IPV6_CHARS = frozenset("0123456789abcdef:.")
_SCHEMES = frozenset({"http", "https"})
# `Sec-Fetch-Site` values of requests that come from no other site's page.
_SAME_PLACE = frozenset({"same-origin", "none"})


def split_host(value: str) -> tuple[str, str] | None:
    """`Host` -> (name, port) with the name lower-case and without a trailing dot."""
    if len(value) > 300:
        return _parse_host(value)  # not remembered: the cache holds short values only
    return _remembered_host(value)


def _parse_host(value: str) -> tuple[str, str] | None:
    value = value.strip().lower()
    if not value or len(value) > 255:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if len(name) <= 2 or not set(name[1:-1]) <= _IPV6_CHARS:
            return None
        port = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port is None:
            return None
    else:
        name, _, port = value.partition(":")
        name = name.rstrip(".")
        if not name or not set(name) <= _HOST_CHARS:
            return None
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        return None
    return name, port


def _page_host(url: str) -> tuple[str, str] | None:
    """The (name, port) of an http(s) page URL such as a `Referer`; None when it is none."""
    try:
        page = urlsplit(url.strip())
    except ValueError:
        return None
    if page.scheme.lower() not in _SCHEMES or "@" in page.netloc:
        return None  # browsers never send userinfo: a forged or foreign spelling
    return split_host(page.netloc)


# Every request parses its Host twice (flow creation, route stage) and a gateway serves
# few hosts: the parse, a pure function of the value, is remembered (bounded).
_remembered_host = functools.lru_cache(maxsize=256)(_parse_host)


def header_limit_denial(flow: Flow) -> Denial | None:
    """The gateway's own limits; aiohttp's parser limits are set above them."""
    limits = flow.request.app[CONFIG].limits
    request_line = len(flow.method) + len(flow.raw_target) + len(" HTTP/1.1")
    if request_line > limits.max_request_line_bytes:
        return Denial(
            414, "uri_too_long", f"The request line is over {limits.max_request_line_bytes} bytes."
        )
    raw = flow.request.raw_headers
    if len(raw) > limits.max_headers:
        return headers_too_large(f"More than {limits.max_headers} header fields.")
    # every name and value, plus ": " and CRLF per field
    total = sum([len(name) + len(value) for name, value in raw]) + 4 * len(raw)
    if total > limits.max_header_bytes:
        return headers_too_large(f"The header section is over {limits.max_header_bytes} bytes.")
    return None


def framing_denial(request: web.Request) -> Denial | None:
    """Refuse ambiguous body framing (the parser refuses most; this is the second lock)."""
    headers = request.headers
    if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        return None  # no body framing at all: nothing to disagree
    lengths = headers.getall("Content-Length", [])
    encodings = headers.getall("Transfer-Encoding", [])
    # SECURITY: two framings, two lengths or an encoding other than chunked could let the
    # upstream see a different request boundary than the gateway judged (smuggling).
    if lengths and encodings:
        return bad_request("Content-Length and Transfer-Encoding together.", "bad_framing")
    if len(set(lengths)) > 1 or any(not v.strip().isdigit() for v in lengths):
        return bad_request("Conflicting or malformed Content-Length.", "bad_framing")
    if encodings and [e.strip().lower() for e in ",".join(encodings).split(",")] != ["chunked"]:
        return bad_request("Only Transfer-Encoding: chunked is accepted.", "bad_framing")
    return None


def under_gateway_prefix(path: str, readings: tuple[str, ...]) -> bool:
    """True when the path, or any reading an upstream might give it, is under `/.gateway`.

    SECURITY: compared case-folded and over every reading (`;` cut, NFKC): a spelling
    some upstream takes for `/.gateway/...` is the gateway's, and is never forwarded.
    """
    for candidate in (path, *readings):
        folded = candidate.casefold()
        if folded == GATEWAY_PREFIX or folded.startswith(GATEWAY_PREFIX + "/"):
            return True
    return False


class RouteLookup:
    name = "route"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        denial = self._judge(flow)
        if denial is not None:
            flow.deny(denial)
            return
        if flow.path is not None and under_gateway_prefix(flow.path, flow.match_paths):
            await self._gateway_endpoint(flow)
            return
        foreign = self._foreign_origin(flow)
        if foreign is None:
            foreign = self._foreign_fetch(flow)
        if foreign is not None:
            flow.deny(
                Denial(
                    403,
                    "cross_origin",
                    f"A page of {foreign} may not act in this application.",
                )
            )

    def _foreign_origin(self, flow: Flow) -> str | None:
        """The `Origin` a browser named for a page of another org's routed host, if any.

        SECURITY: every routed host is a sibling under one site, so SameSite cookies do not
        keep one customer's application (its scripts, an XSS in it) from sending requests,
        websockets included, to another's host with the staff member's app session. Pages
        of this host and of other hosts routed to the same org may; nothing else may
        (`null` included). Requests without `Origin` (navigations, same-origin GETs) pass.
        """
        route = flow.route
        if route is None:
            return None
        for origin in flow.request.headers.getall("Origin", []):
            scheme, separator, authority = origin.strip().partition("://")
            parsed = split_host(authority) if separator and scheme.lower() in _SCHEMES else None
            if parsed is None:
                return origin[:100]  # "null", or not an origin at all
            if not self._of_this_org(parsed[0], flow.host, route):
                return parsed[0]
        return None

    def _of_this_org(self, name: str, host: str, route: Route) -> bool:
        """`name` is this host, or another host routed to the same org."""
        if name == host:
            return True
        other = self.app[POLICIES].current.route_for(name)
        return other is not None and other.org == route.org

    def _foreign_fetch(self, flow: Flow) -> str | None:
        """Who sent a subresource request a browser made for another site's page, if that
        page is not of this host or of a host routed to the same org.

        SECURITY: `<img src>`, `<script src>` and the like send no `Origin` but carry the
        SameSite=Lax app session between sibling hosts. Browsers mark them with
        `Sec-Fetch-Site` and `Sec-Fetch-Mode`; anything from elsewhere that is not a
        top-level or frame navigation must name its page in `Referer` (an `Origin`, when
        sent, was judged above). Unknown values count as from elsewhere; requests without
        Sec-Fetch headers (older clients, non-browsers) pass.
        """
        route = flow.route
        headers = flow.request.headers
        sites = headers.getall("Sec-Fetch-Site", [])
        if route is None or not sites:
            return None
        if all(site.strip().lower() in _SAME_PLACE for site in sites):
            return None
        modes = headers.getall("Sec-Fetch-Mode", [])
        if modes and all(mode.strip().lower() == "navigate" for mode in modes):
            return None
        if "Origin" in headers:
            return None  # judged by `_foreign_origin`: this host or the same org
        referers = headers.getall("Referer", [])
        if len(referers) != 1:
            return "another site" if not referers else "several pages"
        parsed = _page_host(referers[0])
        if parsed is None:
            return "an unreadable page"
        return None if self._of_this_org(parsed[0], flow.host, route) else parsed[0]

    def _judge(self, flow: Flow) -> Denial | None:
        request = flow.request
        limit = header_limit_denial(flow)
        if limit is not None:
            return limit
        if flow.method == "CONNECT":
            # SECURITY: no tunnels: the gateway is not an open proxy.
            return method_not_allowed("CONNECT", ALLOWED_METHODS)
        hosts = request.headers.getall("Host", [])
        if len(hosts) != 1:
            return bad_request("Exactly one Host header is required.", "bad_host")
        parsed = split_host(hosts[0])
        if parsed is None:
            return bad_request("The Host header is malformed.", "bad_host")
        host = parsed[0]
        flow.host = host
        if not flow.raw_target.startswith("/"):
            denial = self._absolute_form(flow, host)
            if denial is not None:
                return denial
        framing = framing_denial(request)
        if framing is not None:
            return framing
        if asks_for_websocket(request):
            if flow.method != "GET":
                # SECURITY: the upgrade would be judged as this method but made upstream as GET.
                return bad_request("Only a GET request opens a websocket.", "bad_upgrade")
            if not web.WebSocketResponse().can_prepare(request).ok:
                # Checked before the upstream is asked: its handshake would succeed (the
                # gateway makes its own) and the client's then fail.
                return bad_request("The websocket handshake is malformed.", "bad_upgrade")
        sni_refusal = misdirected_to(request, host)  # SECURITY: 421 when SNI names another host
        if sni_refusal is not None:
            return sni_refusal
        route = self.app[POLICIES].current.route_for(host)
        if route is None:
            return not_found(f"No application is routed at {host}.", "unknown_host")
        flow.route = route
        try:
            normalised = normalise(
                flow.raw_path,
                allow_encoded_slashes=route.allow_encoded_slashes,
                case_insensitive=route.case_insensitive,
            )
        except PathRejected as exc:
            return bad_request(f"The path is refused: {exc.reason}", "bad_path")
        flow.path = normalised.forwarded
        flow.match_path = normalised.match_key
        flow.match_paths = normalised.match_keys
        return None

    def _absolute_form(self, flow: Flow, host: str) -> Denial | None:
        if flow.raw_target == "*":
            return bad_request("Asterisk-form targets are not served.", "bad_target")
        try:
            target = urlsplit(flow.raw_target)
            authority = split_host(target.netloc) if target.netloc else None
        except ValueError:
            authority = None
        if authority is None or target.scheme.lower() not in ("http", "https"):
            return bad_request("The request target is malformed.", "bad_target")
        # SECURITY: absolute-form is accepted only for a routed authority that is the Host.
        if authority[0] != host or self.app[POLICIES].current.route_for(authority[0]) is None:
            return bad_request(
                "An absolute-form target must name this routed host.", "unrouted_authority"
            )
        return None

    async def _gateway_endpoint(self, flow: Flow) -> None:
        # SECURITY: nothing under /.gateway/ is ever forwarded to the customer application;
        # only the exact spelling `/.gateway/<name>` reaches an endpoint, the rest is 404.
        path = flow.path or ""
        exact = path.startswith(GATEWAY_PREFIX + "/")
        handler = self.app[ROUTED_ENDPOINTS].get(path[len(GATEWAY_PREFIX) + 1 :]) if exact else None
        if handler is None:
            flow.deny(not_found("No such gateway endpoint on this host."))
            return
        response = await handler(flow.request)
        flow.response = response
        flow.status = response.status
