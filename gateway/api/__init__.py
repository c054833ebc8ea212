"""The JSON API v1 on the console origin (`/.gateway/api/v1/…`).

`add_routes(console_app)` installs the shared plumbing (`gateway.api.common`: session
and error middlewares) and every API route. Each part of the API lives in its own
module with an `add_routes(app)`; they are listed here, explicitly.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api import auth, common, requests


def add_routes(console_app: web.Application) -> None:
    common.install(console_app)
    auth.add_routes(console_app)
    requests.add_routes(console_app)
    # --- further API modules register here, one line each ---
