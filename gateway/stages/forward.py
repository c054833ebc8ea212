"""The forward stage: the judged request goes to the upstream, the answer streams back.

Plain HTTP goes through `gateway.proxy.streaming`, websocket upgrades (only on routes
with `websockets: true`) through `gateway.proxy.websockets`. While forwarding, the flow
is registered in the app's in-flight set under its grant so that revoking the grant
ends it at once: an HTTP exchange is cancelled (before the answer: a `grant_ended`
denial; during it: the client connection is cut), a websocket is closed with 1008.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appkeys import IN_FLIGHT, UPSTREAM_CLIENT
from gateway.denials import Denial
from gateway.flow import Flow
from gateway.proxy.streaming import exchange, upstream_url
from gateway.proxy.websockets import relay
from gateway.stages.policy import is_websocket_upgrade


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
        url = upstream_url(route.upstream, flow.path, flow.query)
        client = self.app[UPSTREAM_CLIENT]
        in_flight = self.app[IN_FLIGHT]
        if is_websocket_upgrade(flow.request):
            if not route.websockets:
                flow.deny(
                    Denial(403, "websockets_disabled", "This application takes no websockets.")
                )
                return
            in_flight.add(flow)
            try:
                await relay(flow, client, url, flow.upstream_request_headers)
            finally:
                in_flight.discard(flow)
            return
        task = asyncio.current_task()

        def cancel(_reason: str) -> None:
            if task is not None:
                task.cancel()

        remove = flow.on_abort(cancel)
        in_flight.add(flow)
        try:
            await exchange(flow, client, url, flow.upstream_request_headers)
        except asyncio.CancelledError:
            if flow.aborted is None or task is None:
                raise
            task.uncancel()
            self._aborted(flow)
        finally:
            remove()
            in_flight.discard(flow)

    @staticmethod
    def _aborted(flow: Flow) -> None:
        flow.interrupted = f"aborted: {flow.aborted}"
        if flow.response is not None and flow.response.prepared:
            flow.cut_connection()
            return
        flow.response = None
        flow.deny(Denial(403, "grant_ended", f"Access ended: {flow.aborted}"))
