"""The inject stage: the headers the upstream receives, identity added last.

Client headers pass through the spoofing rules of `gateway.proxy.headers` (hop-by-hop
computed before anything is added, spoofable names and gateway cookies dropped), the
route's request-header edits apply, `X-Forwarded-For/Proto/Host` are rebuilt, `Host` is
the upstream's unless the route preserves it, and then the identity: `X-Gateway-User`,
`X-Gateway-Actor`, `X-Gateway-Grant` and the signed `X-Gateway-Assertion`.
"""

from __future__ import annotations

import functools

from aiohttp import web

from gateway.appkeys import ASSERTION_SIGNER, CLOCK, CONFIG
from gateway.denials import Denial
from gateway.errors import AssertionRefused
from gateway.flow import Flow
from gateway.proxy.headers import forwarded_headers, upstream_request_headers
from gateway.proxy.streaming import public_origin, received_headers
from policies.model import Upstream


@functools.lru_cache(maxsize=64)  # one value per upstream, asked on every request
def upstream_host(upstream: Upstream) -> str:
    """The `Host` the upstream is sent: its own authority."""
    default = 443 if upstream.scheme == "https" else 80
    name = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return name if upstream.port == default else f"{name}:{upstream.port}"


class Inject:
    name = "inject"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        route, grant, request = flow.route, flow.grant, flow.request
        if route is None or grant is None:
            # SECURITY: identity is only ever added for a routed, granted flow.
            flow.deny(Denial(500, "internal_error", "No grant to speak for."))
            return
        raw = received_headers(request.raw_headers)
        headers = upstream_request_headers(raw, route.request_headers)
        host = request.headers.get("Host", flow.host)
        headers.extend(
            forwarded_headers(
                peer=request.remote or "",
                scheme="https" if request.secure else "http",
                host=host,
                headers=raw,
                trusted=self.app[CONFIG].trusted_proxies,
            )
        )
        headers.append(("Host", host if route.preserve_host else upstream_host(route.upstream)))
        try:
            assertion = self.app[ASSERTION_SIGNER].assertion(
                grant, audience=public_origin(request), now=self.app[CLOCK].now()
            )
        except AssertionRefused:
            # SECURITY: a grant that ended since the grant stage looked is not spoken for.
            flow.deny(Denial(403, "grant_expired", "The approved access has ended."))
            return
        headers.extend(
            [
                ("X-Gateway-User", grant.member_id),
                ("X-Gateway-Actor", grant.actor.id),
                ("X-Gateway-Grant", grant.grant_id),
                ("X-Gateway-Assertion", assertion),
            ]
        )
        flow.upstream_request_headers = headers
