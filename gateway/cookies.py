"""The gateway's own cookie names: defined once, stripped from every upstream exchange.

The console session cookie lives only on the console origin; the app-session cookie is
host-only on each routed host. Neither may ever reach a customer application, and an
upstream `Set-Cookie` naming either is dropped (a customer app must not plant a session).
"""

from __future__ import annotations

CONSOLE_SESSION = "__Host-gw_console"
APP_SESSION = "__Host-gw_app"

# Compared case-insensitively: browsers treat `__Host-` case-sensitively, but an upstream
# must not slip a look-alike through by changing case.
GATEWAY_COOKIES: frozenset[str] = frozenset({CONSOLE_SESSION.lower(), APP_SESSION.lower()})


def is_gateway_cookie(name: str) -> bool:
    return name.strip().lower() in GATEWAY_COOKIES
