"""The gateway's own cookie names: defined once, stripped from every upstream exchange.

The console session cookie, and before a login the signed pre-login state
(`gateway.sessions.prelogin`), live only on the console origin; the app-session cookie is
host-only on each routed host, and so is the hand-off binding (a random nonce that ties
a hand-off to the browser that was sent to log in; `gateway.sessions.handoff`). None may
ever reach a customer application, and an upstream `Set-Cookie` naming one is dropped (a
customer app must not plant a session or a binding).
"""

from __future__ import annotations

CONSOLE_SESSION = "__Host-gw_console"
PRELOGIN = "__Host-gw_prelogin"
APP_SESSION = "__Host-gw_app"
HANDOFF_BINDING = "__Host-gw_handoff"

# Compared case-insensitively: browsers treat `__Host-` case-sensitively, but an upstream
# must not slip a look-alike through by changing case.
GATEWAY_COOKIES: frozenset[str] = frozenset(
    {CONSOLE_SESSION.lower(), PRELOGIN.lower(), APP_SESSION.lower(), HANDOFF_BINDING.lower()}
)


def is_gateway_cookie(name: str) -> bool:
    return name.strip().lower() in GATEWAY_COOKIES
