"""The console's access-request pages: where an approver lands from a notice email.

    GET  /requests                    requests the principal may see (newest first)
    GET  /requests/{id}               one request, its history, and the actions allowed
    POST /requests/{id}/approve       (csrf_token, comment, duration_s?, scope?)
    POST /requests/{id}/deny          (csrf_token, comment)
    POST /requests/{id}/cancel        (csrf_token)
    POST /requests/{id}/revoke        (csrf_token, comment)

A page never changes anything: only a POST with the session's CSRF token does, so the
link in an email alone approves nothing. Visibility is the API's: staff see their own
requests, members their org's; anything else is 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.access.errors import AccessError
from gateway.access.model import AccessRequest
from gateway.access.service import access_service
from gateway.access.text import ID_PATTERN
from gateway.api.common import ApiError
from gateway.api.requests import may_see
from gateway.appkeys import CLOCK
from gateway.console.forms import field
from gateway.console.pages import posted_form, render, see_other, signed_in
from gateway.denials import Denial
from gateway.identity import Principal, PrincipalKind
from gateway.sessions.console import get_session

ACTIONS = ("approve", "deny", "cancel", "revoke")


def _visible(principal: Principal, found: AccessRequest | None) -> AccessRequest:
    if found is not None and may_see(principal, found):
        return found
    # SECURITY: another org's (or another requester's) request does not exist: 404.
    raise ApiError(Denial(404, "not_found", "no such request"))


def _request_id(request: web.Request) -> str:
    rid = request.match_info["id"]
    if not ID_PATTERN.fullmatch(rid):
        raise ApiError(Denial(404, "not_found", "no such request"))
    return rid


async def list_page(request: web.Request) -> web.Response:
    who = await signed_in(request, "/requests")
    if isinstance(who, web.Response):
        return who
    store = access_service(request.config_dict).store
    if who.kind is PrincipalKind.STAFF:
        found = await store.search(requester=who)
    else:
        found = await store.search(org=who.org)
    session = await get_session(request)
    now = request.config_dict[CLOCK].now()
    return render(request, session, "requests.html", {"requests": [r.to_json(now) for r in found]})


async def _detail(
    request: web.Request, who: Principal, rid: str, *, error: str | None, status: int = 200
) -> web.Response:
    store = access_service(request.config_dict).store
    found = _visible(who, await store.get(rid))
    history = await store.history(rid)
    session = await get_session(request)
    now = request.config_dict[CLOCK].now()
    context: dict[str, Any] = {
        "item": found.to_json(now),
        "history": [h.to_json() for h in history],
        "principal": who,
        "is_requester": found.requester.key == who.key,
        "error": error,
    }
    return render(request, session, "request.html", context, status=status)


async def detail_page(request: web.Request) -> web.Response:
    rid = _request_id(request)
    who = await signed_in(request, f"/requests/{rid}")
    if isinstance(who, web.Response):
        return who
    return await _detail(request, who, rid, error=None)


async def act(request: web.Request) -> web.Response:
    rid = _request_id(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(Denial(404, "not_found", "no such action"))
    who = await signed_in(request, f"/requests/{rid}")
    if isinstance(who, web.Response):
        return who
    session = await get_session(request)
    form = await posted_form(request, session)
    store = access_service(request.config_dict).store
    _visible(who, await store.get(rid))
    comment = field(form, "comment", max_length=2000)
    try:
        if action == "approve":
            duration = field(form, "duration_s", max_length=12).strip()
            scope = field(form, "scope", max_length=16).strip()
            # ASCII digits only: str.isdigit() also admits '²' and other scripts' digits.
            whole = duration.isascii() and duration.isdigit()
            await store.approve(
                rid,
                who,
                comment=comment,
                duration_s=int(duration) if whole else (duration or None),
                scope=scope or None,
            )
        elif action == "deny":
            await store.deny(rid, who, comment=comment)
        elif action == "cancel":
            await store.cancel(rid, who, comment=comment)
        else:
            await store.revoke(rid, who, comment=comment)
    except AccessError as exc:
        return await _detail(request, who, rid, error=exc.reason, status=exc.status)
    return see_other(f"/requests/{rid}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/requests", list_page)
    app.router.add_get("/requests/{id}", detail_page)
    app.router.add_post("/requests/{id}/{action}", act)
