"""The console's access-request pages: where an approver lands from a notice email.

    GET  /requests                    requests the principal may see (newest first); for
                                      staff, also the "Request access" form
    POST /requests/new                (csrf_token, org, member, justification, duration_s, scope)
    GET  /requests/{id}               one request, its history, and the actions allowed
    POST /requests/{id}/approve       (csrf_token, comment, duration_s?, scope?)
    POST /requests/{id}/deny          (csrf_token, comment)
    POST /requests/{id}/cancel        (csrf_token)
    POST /requests/{id}/revoke        (csrf_token, comment)

A page never changes anything: only a POST with the session's CSRF token does, so the
link in an email alone approves nothing. Visibility is the API's: staff see their own
requests, members their org's; anything else is 404.

Filing goes through `AccessStore.file`, exactly as `POST /.gateway/api/v1/requests` does:
the store's rules decide, and a refusal shows the form again with the reason, the values
typed and the API's status. The duration is typed in seconds, as the API takes it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.access.directory import person_of
from gateway.access.errors import AccessError
from gateway.access.model import AccessRequest
from gateway.access.service import access_service
from gateway.access.settings import MAX_JUSTIFICATION
from gateway.access.text import ID_PATTERN
from gateway.api.common import ApiError, access_refusal
from gateway.api.requests import may_see
from gateway.appkeys import CLOCK
from gateway.console.forms import field
from gateway.console.pages import posted_form, render, see_other, signed_in
from gateway.denials import Denial
from gateway.identity import Principal, PrincipalKind
from gateway.sessions.console import get_session

ACTIONS = ("approve", "deny", "cancel", "revoke")
# The filing form's fields and the longest value each may have (the justification's is
# the store's own rule, checked there). Ids are at most 64 characters (`ID_PATTERN`); a
# longer duration is no number the store would take anyway.
FILING_FIELDS = {
    "org": 64,
    "member": 64,
    "justification": MAX_JUSTIFICATION,
    "duration_s": 12,
    "scope": 16,
}


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


async def _listing(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    store = access_service(request.config_dict).store
    if who.kind is PrincipalKind.STAFF:
        found = await store.search(requester=who)
    else:
        found = await store.search(org=who.org)
    now = request.config_dict[CLOCK].now()
    return [r.to_json(now) for r in found]


async def _list(
    request: web.Request,
    who: Principal,
    *,
    typed: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    try:
        listing = await _listing(request, who)
    except AccessError:
        if error is None:
            raise
        listing = []  # the refusal matters more here than the list (e.g. Redis is down)
    session = await get_session(request)
    context: dict[str, Any] = {
        "requests": listing,
        "principal": who,
        "typed": typed or {},
        "error": error,
    }
    return render(request, session, "requests.html", context, status=status, headers=headers)


async def list_page(request: web.Request) -> web.Response:
    who = await signed_in(request, "/requests")
    if isinstance(who, web.Response):
        return who
    return await _list(request, who)


def _typed(form: dict[str, str]) -> dict[str, str]:
    """The values to show again in the form: each one within its size, else left out."""
    return {
        name: form.get(name, "")
        for name, limit in FILING_FIELDS.items()
        if len(form.get(name, "")) <= limit
    }


def _filing(form: dict[str, str]) -> dict[str, object]:
    """The form's values as `AccessStore.file` takes them; ApiError (422) if unreadable."""
    unknown = sorted(set(form) - set(FILING_FIELDS) - {"csrf_token"})
    if unknown:
        raise ApiError(Denial(422, "invalid_field", f"unknown field(s) {', '.join(unknown)}"))
    org, member, duration, scope = (
        field(form, name, max_length=FILING_FIELDS[name]).strip()
        for name in ("org", "member", "duration_s", "scope")
    )
    # ASCII digits only: str.isdigit() also admits '²' and other scripts' digits. Anything
    # else goes to the store as typed, which refuses it as the API would.
    whole = duration.isascii() and duration.isdigit()
    return {
        "org": org,
        "member": member,
        # Browsers send a textarea's line breaks as CRLF; the API's callers send LF.
        "justification": form.get("justification", "").replace("\r\n", "\n"),
        "duration_s": int(duration) if whole else duration,
        "scope": scope,
    }


async def file_request(request: web.Request) -> web.Response:
    who = await signed_in(request, "/requests")
    if isinstance(who, web.Response):
        return who
    # SECURITY: only vendor staff file requests; a member's post is refused before its form
    # is even read (the store refuses it too).
    if who.kind is not PrincipalKind.STAFF:
        raise ApiError(Denial(403, "staff_only", "only vendor staff file access requests"))
    session = await get_session(request)
    form = await posted_form(request, session)
    typed = _typed(form)
    try:
        values = _filing(form)
    except ApiError as exc:
        return await _list(
            request, who, typed=typed, error=exc.denial.reason, status=exc.denial.status
        )
    store = access_service(request.config_dict).store
    try:
        created = await store.file(
            who,
            org=values["org"],
            member=values["member"],
            justification=values["justification"],
            duration_s=values["duration_s"],
            scope=values["scope"],
        )
    except AccessError as exc:
        refusal = access_refusal(exc).denial
        return await _list(
            request,
            who,
            typed=typed,
            error=refusal.reason,
            status=refusal.status,
            headers=dict(refusal.headers),
        )
    return see_other(f"/requests/{created.id}")


async def _detail(
    request: web.Request,
    who: Principal,
    rid: str,
    *,
    error: str | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    store = access_service(request.config_dict).store
    found = _visible(who, await store.get(rid))
    history = await store.history(rid)
    session = await get_session(request)
    now = request.config_dict[CLOCK].now()
    # Only offered, never trusted: the decision scripts refuse the requester's own person.
    decides = who.kind is PrincipalKind.MEMBER and await person_of(
        store.redis, found.requester.key
    ) != await person_of(store.redis, who.key)
    context: dict[str, Any] = {
        "item": found.to_json(now),
        "history": [h.to_json() for h in history],
        "principal": who,
        "is_requester": found.requester.key == who.key,
        "decides": decides,
        "error": error,
    }
    return render(request, session, "request.html", context, status=status, headers=headers)


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
        refusal = access_refusal(exc).denial
        return await _detail(
            request,
            who,
            rid,
            error=refusal.reason,
            status=refusal.status,
            headers=dict(refusal.headers),
        )
    return see_other(f"/requests/{rid}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/requests", list_page)
    app.router.add_post("/requests/new", file_request)
    app.router.add_get("/requests/{id}", detail_page)
    app.router.add_post("/requests/{id}/{action}", act)
