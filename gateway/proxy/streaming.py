"""Streaming one HTTP exchange between client and upstream; bodies are never read whole.

The request body is handed to the upstream chunk by chunk as the client sends it, with
the client's framing (Content-Length kept, else chunked); the response body is written
to the client as each chunk arrives (server-sent events pass event by event). Nothing
is decompressed. (One exception: a small form body a route judges for `_method` fields
is read ahead by the policy stage and sent first, unchanged; see `form_override`.)
Only the first `capture.max_bytes` of each body is kept for the audit.

The upstream client session (`upstream_session()`, one per process) sends only the
headers the gateway chose: its request class (`UpstreamRequest`) adds none of aiohttp's
own (`User-Agent`, `Accept`, `Accept-Encoding`, a default `Content-Type`), websocket
handshakes included.

Failures before the upstream's response headers become denials (refused or reset ->
502, timeout -> 504, a 1xx final answer such as an unasked 101 -> 502); failures after
the response started cut the client's connection so a truncated body is never mistaken
for a whole one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.denials import Denial
from gateway.flow import Flow
from gateway.proxy.expect import send_continue
from gateway.proxy.headers import downstream_response_headers
from gateway.stages.route import split_host
from policies.model import Upstream

CHUNK_LIMIT = 256 * 1024  # largest single read handed on; memory per flow stays bounded

# Headers aiohttp would otherwise invent for the upstream request.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_NEVER_INVENTED: CIMultiDict[None] = CIMultiDict((name, None) for name in sorted(SKIP_AUTO_HEADERS))


class UpstreamRequest(aiohttp.ClientRequest):
    """An upstream request that carries only the headers the gateway chose.

    aiohttp adds `User-Agent`, `Accept` and `Accept-Encoding` to every request, and a
    `Content-Type` to bodies, unless told to skip them; telling it per request rebuilds the
    skip list and copies the headers each time. This request class skips them all, always.
    """

    # Read (never written) by aiohttp where a body would get its default Content-Type.
    _skip_auto_headers = _NEVER_INVENTED

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        # SECURITY: no header is invented: the upstream sees what the client sent, less
        # what the header rules dropped, plus what the gateway states.
        return


def upstream_session() -> aiohttp.ClientSession:
    """The one upstream client session of a gateway process (keep-alive pool)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        # SECURITY: no cookie jar: one user's upstream cookies must never reach another.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
        trust_env=False,
        request_class=UpstreamRequest,
    )


def upstream_url(upstream: Upstream, path: str, query: str) -> URL:
    """The upstream URL for the judged path, taken as already encoded (no re-encoding)."""
    target = _upstream_base(upstream) + path
    if query:
        target += "?" + query
    if len(target) > _CACHED_URL_CHARS:
        return URL(target, encoded=True)
    return _encoded_url(target)


@functools.lru_cache(maxsize=64)
def _upstream_base(upstream: Upstream) -> str:
    port = (
        "" if upstream.port == (443 if upstream.scheme == "https" else 80) else f":{upstream.port}"
    )
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return f"{upstream.scheme}://{host}{port}{upstream.base_path}"


_CACHED_URL_CHARS = 1024  # longer targets are parsed each time: the cache stays small


@functools.lru_cache(maxsize=1024)
def _encoded_url(target: str) -> URL:
    # URLs are immutable: the same target (most requests of an app repeat a few) is
    # parsed once. Bounded, so distinct hostile targets only evict each other.
    return URL(target, encoded=True)


@functools.lru_cache(maxsize=64)
def upstream_timeout(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    """The route's upstream timeouts (one immutable object per distinct pair)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)


@functools.lru_cache(maxsize=64)
def upstream_origin(upstream: Upstream) -> str:
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return f"{upstream.scheme}://{host}:{upstream.port}"


def public_origin(request: web.BaseRequest) -> str:
    """The origin the client addressed, serialised once (RFC 6454): scheme, the host as the
    route stage judged it (lower-case, no trailing dot) and the port only when not the
    scheme's default. It is the assertion's audience: one origin, one spelling."""
    host = request.headers.get("Host", "")
    if len(host) > _CACHED_HOST_CHARS:
        return _origin(request.secure, host)
    return _remembered_origin(request.secure, host)


def _origin(secure: bool, host: str) -> str:
    scheme = "https" if secure else "http"
    parsed = split_host(host)
    if parsed is None:
        return f"{scheme}://"  # never a routed flow: the route stage refused the Host
    name, port = parsed
    default = "443" if scheme == "https" else "80"
    return f"{scheme}://{name}" + (f":{int(port)}" if port and int(port) != int(default) else "")


# Asked twice per flow (the assertion's audience, `Location` rewriting) and a pure function
# of (TLS, Host), which takes few values: remembered, bounded; long values never are.
_CACHED_HOST_CHARS = 300
_remembered_origin = functools.lru_cache(maxsize=256)(_origin)


class _Capture:
    """Tee of the first `limit` bytes of a stream (None when the route captures nothing).

    Without a limit `feed` changes nothing, so one instance (`_NO_CAPTURE`) serves every
    flow of a route that captures nothing.
    """

    def __init__(self, limit: int | None) -> None:
        self.data: bytearray | None = bytearray() if limit is not None else None
        self.limit = limit or 0
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        if self.data is None:
            return
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True


_NO_CAPTURE = _Capture(None)


def _capture(limit: int | None) -> _Capture:
    return _NO_CAPTURE if limit is None else _Capture(limit)


async def _request_body(flow: Flow, capture: _Capture) -> AsyncIterator[bytes]:
    ahead = flow.request_body_ahead
    if ahead:
        # Read ahead by the policy stage (a form judged for `_method`): the same bytes, in
        # the same framing, counted and captured as if streamed now.
        flow.request_bytes += len(ahead)
        capture.feed(ahead)
        # Sent once (the body is a generator: never replayed): not held for the rest of a
        # flow that may stream its response for long.
        flow.request_body_ahead = b""
        yield ahead
        del ahead
    async for chunk in flow.request.content.iter_chunked(CHUNK_LIMIT):
        flow.request_bytes += len(chunk)
        capture.feed(chunk)
        yield chunk


def _has_body(request: web.BaseRequest) -> bool:
    length = request.headers.get("Content-Length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "Transfer-Encoding" in request.headers


def received_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Headers as received, names in the sender's own case; values kept byte for byte when
    they are ASCII or UTF-8 (other bytes become U+FFFD rather than break the response)."""
    return [(name.decode("latin-1"), value.decode("utf-8", "replace")) for name, value in raw]


def upstream_failure(exc: BaseException) -> Denial:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return Denial(504, "upstream_timeout", "The application did not answer in time.")
    return Denial(502, "upstream_unavailable", "The application could not be reached.")


async def exchange(
    flow: Flow,
    client: aiohttp.ClientSession,
    url: URL,
    headers: Sequence[tuple[str, str]],
) -> None:
    """Forward the flow's request to `url` and stream the answer back to the client."""
    route = flow.route
    if route is None:
        raise RuntimeError("exchange() needs a routed flow")
    request = flow.request
    loop = asyncio.get_running_loop()
    cap = route.capture.max_bytes if route.capture.bodies else None
    request_capture, response_capture = _capture(cap), _capture(cap)
    timeout = upstream_timeout(route.timeouts.connect_s, route.timeouts.read_s)
    data = None
    if _has_body(request):
        if flow.request_body_ahead is None:
            await send_continue(request)  # else answered when the body was read ahead
        data = _request_body(flow, request_capture)
    flow.forwarded = True
    try:
        upstream = await client.request(
            flow.method,
            url,
            headers=CIMultiDict(headers),
            data=data,
            allow_redirects=False,
            timeout=timeout,
            ssl=route.upstream.verify_tls,
            auto_decompress=False,
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        flow.deny(upstream_failure(exc))
        flow.interrupted = type(exc).__name__
        return
    finally:
        flow.captured_request = request_capture.data
        flow.request_truncated = request_capture.truncated
    completed = False
    try:
        flow.upstream_connect_s = loop.time() - flow.started_monotonic
        flow.upstream_status = upstream.status
        flow.upstream_response_headers = received_headers(upstream.raw_headers)
        if upstream.status < 200:
            # A protocol switch (or any 1xx as the final answer) nobody asked for: the
            # upgrade headers never left the gateway. Relayed, it would leave the client's
            # connection switched to nothing and held open.
            flow.deny(
                Denial(502, "upstream_bad_answer", "The application answered out of protocol.")
            )
            flow.interrupted = f"upstream answered {upstream.status} to a plain request"
            return
        headers_out = CIMultiDict(
            downstream_response_headers(
                flow.upstream_response_headers,
                route.response_headers,
                upstream_origin=upstream_origin(route.upstream),
                public_origin=public_origin(request),
            )
        )
        # The upstream may have its own X-Request-Id; the gateway's travels beside it.
        headers_out["X-Gateway-Request-Id"] = flow.request_id
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers_out
        )
        flow.response = response
        flow.status = upstream.status
        try:
            # What already arrived with the upstream's headers (a small answer: all of it)
            # goes out in the same write as the client's headers; nothing waits for it.
            content = upstream.content
            first = content.read_nowait(CHUNK_LIMIT) if content.exception() is None else b""
            if first:
                response._send_headers_immediately = False  # sent with `first`, just below
            await response.prepare(request)
            if first:
                response_capture.feed(first)
                flow.response_bytes += len(first)
                if upstream.content.at_eof():
                    await response.write_eof(first)
                else:
                    await response.write(first)
            if not upstream.content.at_eof():
                async for chunk in upstream.content.iter_any():
                    response_capture.feed(chunk)
                    flow.response_bytes += len(chunk)
                    await response.write(chunk)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Mid-body failure on either side: the client must see a broken response.
            flow.interrupted = f"{type(exc).__name__}: {exc}"[:500]
            flow.cut_connection()
            return
        completed = True
    finally:
        flow.captured_response = response_capture.data
        flow.response_truncated = response_capture.truncated
        if completed:
            upstream.release()  # back to the keep-alive pool
        else:
            upstream.close()  # a half-read answer must never be reused
        flow.duration_s = loop.time() - flow.started_monotonic
