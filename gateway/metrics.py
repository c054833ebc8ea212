"""The operators' metrics: the Prometheus text format on a listener of its own.

Every counter the gateway keeps (policy reloads, stage failures, lost audit outcomes,
notice failures, …) lives in prometheus_client's default registry; this serves it.
The metrics listener is plain HTTP and apart from the console and routed hosts, so
that scraping never shares an origin with people or customer applications.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


def metrics_app(registry: CollectorRegistry = REGISTRY) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
