"""The forward stage: the judged request goes to the upstream, the answer streams back.

Plain HTTP goes through `gateway.proxy.streaming`, websocket upgrades (only on routes
with `websockets: true`) through `gateway.proxy.websockets`. While forwarding, the flow
is in the app's in-flight set under its grant (the grant stage put it there) so that
revoking the grant ends it at once: a flow aborted before forwarding is a `grant_ended`
denial (`session_ended` when its login ended) and reaches nothing; an HTTP exchange is
cancelled (before the answer: the same denial; during it: the client connection is cut),
a websocket is closed with 1008.
The grant's end needs no event: the stage aborts its own flow when the grant's
`expires_at` comes (by the Clock when forwarding starts, then by the loop's timer).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appkeys import CLOCK, UPSTREAM_CLIENT
from gateway.denials import Denial
from gateway.flow import GRANT_EXPIRED, SESSION_ENDED, Flow
from gateway.proxy.streaming import exchange, upstream_url
from gateway.proxy.websockets import relay
from gateway.stages.policy import is_websocket_upgrade
from policies.model import Route


class Forward:
    name = "forward"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        route = flow.route
        if route is None or flow.path is None or flow.grant is None:
            # SECURITY: only a routed, judged, granted flow is ever forwarded.
            flow.deny(Denial(500, "internal_error", "The request was not authorised."))
            return
        remaining = flow.grant.expires_at - self.app[CLOCK].now()
        if remaining <= 0:
            flow.abort(GRANT_EXPIRED)
        if _was_aborted(flow):
            # SECURITY: the grant ended after it was checked: nothing reaches the upstream.
            self._aborted(flow)
            return
        # SECURITY: the exchange (a stream, a websocket) ends when the grant does, by this
        # process's own timer: the expiry event may come late or, with Redis down, never.
        deadline = asyncio.get_running_loop().call_later(remaining, flow.abort, GRANT_EXPIRED)
        try:
            await self._forward(flow, route)
        finally:
            deadline.cancel()

    async def _forward(self, flow: Flow, route: Route) -> None:
        if flow.path is None:
            raise RuntimeError("forward needs a judged path")
        url = upstream_url(route.upstream, flow.path, flow.query)
        client = self.app[UPSTREAM_CLIENT]
        if is_websocket_upgrade(flow.request):
            if not route.websockets:
                flow.deny(
                    Denial(403, "websockets_disabled", "This application takes no websockets.")
                )
                return
            await relay(flow, client, url, flow.upstream_request_headers)
            return
        task = asyncio.current_task()

        def cancel(_reason: str) -> None:
            if task is not None:
                task.cancel()

        remove = flow.on_abort(cancel)
        try:
            await exchange(flow, client, url, flow.upstream_request_headers)
        except asyncio.CancelledError:
            if flow.aborted is None or task is None:
                raise
            task.uncancel()
            self._aborted(flow)
        finally:
            remove()

    @staticmethod
    def _aborted(flow: Flow) -> None:
        flow.interrupted = f"aborted: {flow.aborted}"
        if flow.response is not None and flow.response.prepared:
            flow.cut_connection()
            return
        flow.response = None
        if flow.aborted == SESSION_ENDED:
            flow.deny(Denial(403, SESSION_ENDED, "Your gateway login has ended; log in again."))
            return
        flow.deny(Denial(403, "grant_ended", f"Access ended: {flow.aborted}"))


def _was_aborted(flow: Flow) -> bool:
    # A function, not an inline test: `flow.aborted` changes while this stage awaits.
    return flow.aborted is not None
