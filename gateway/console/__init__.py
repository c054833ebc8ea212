"""The console's pages (login, TOTP, enrolment, step-up, logout) on the console origin.

`add_routes(console_app)` installs the shared plumbing (console sessions, error
answers), the Jinja2 templates of this package and the pages of `gateway.console.pages`.
"""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.api import common
from gateway.console import pages, requests


def add_routes(console_app: web.Application) -> None:
    common.install(console_app)
    aiohttp_jinja2.setup(
        console_app,
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
    pages.add_routes(console_app)
    requests.add_routes(console_app)
