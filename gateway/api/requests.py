"""The access workflow's JSON API on the console origin (`/.gateway/api/v1/…`).

    POST /requests                 {org, member, justification, duration_s, scope} -> 201
    GET  /requests?state=&org=&since=&until=      GET /requests/{id}  (with its history)
    POST /requests/{id}/approve    {comment?, duration_s?, scope?}
    POST /requests/{id}/deny       {comment}
    POST /requests/{id}/cancel     {comment?}
    POST /requests/{id}/revoke     {comment?}
    POST /orgs/{org}/revoke-all    {comment?}
    GET|PUT /orgs/{org}/approvers  {approvers: [member ids]}   ([] = every admin)
    GET|PUT /orgs/{org}/settings   {max_duration_s?, pending_lapse_s?, ...} (partial update)
    POST /impersonate              {member, duration_s, scope?}  (customer admin, own org)

Who sees what: staff see and act on their own requests; members of an org see that org's
requests and settings; only approvers decide; only admins change approvers and settings.
Anything of another org is 404, never 403, so nothing leaks whether it exists. Errors are
`{error, reason, request_id}`: 400 malformed, 413 too large, 415 not JSON, 422 invalid,
409 wrong state, 403/404 as above, 503 when the grant store is unreachable.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.access import directory
from gateway.access.errors import AccessError, AccessNotFound
from gateway.access.model import AccessRequest, RequestState
from gateway.access.service import access_service
from gateway.access.settings import load_settings, save_settings
from gateway.access.store import AccessStore
from gateway.access.text import ID_PATTERN
from gateway.api.common import (
    API_PREFIX,
    ApiError,
    Caller,
    access_refusal,
    caller,
    json_body,
)
from gateway.appkeys import CLOCK
from gateway.denials import Denial
from gateway.identity import Principal, PrincipalKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _not_found(what: str = "request") -> ApiError:
    return ApiError(Denial(404, "not_found", f"no such {what}"))


def _refusals(handler: Handler) -> Handler:
    """Workflow refusals become their API errors (status and stable code)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except AccessError as exc:
            raise access_refusal(exc) from exc

    wrapped.__name__ = handler.__name__
    return wrapped


def _only(body: Mapping[str, Any], *allowed: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(
            Denial(422, "invalid_field", f"unknown field(s) {', '.join(unknown)}; known: "
                   + ", ".join(allowed))
        )  # fmt: skip


def _store(request: web.Request) -> AccessStore:
    return access_service(request.config_dict).store


def _now(request: web.Request) -> float:
    return request.config_dict[CLOCK].now()


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not ID_PATTERN.fullmatch(value):
        raise _not_found(name)
    return value


def may_see(principal: Principal, found: AccessRequest) -> bool:
    """Staff see their own requests, members their org's (API and console pages alike)."""
    if principal.kind is PrincipalKind.STAFF:
        return found.requester.key == principal.key
    return principal.org == found.org


async def _visible(request: web.Request, who: Caller) -> AccessRequest:
    """The request named in the path, if this caller may see it; else 404 (no leak)."""
    rid = _path_id(request, "id")
    found = await _store(request).get(rid)
    if found is None or not may_see(who.principal, found):
        raise _not_found()
    return found


def _own_org(request: web.Request, who: Caller) -> str:
    """The org named in the path, if it is the caller's own; else 404 (no leak)."""
    org = _path_id(request, "org")
    # SECURITY: another org's approvers, settings and grants do not exist for this caller.
    if who.principal.kind is not PrincipalKind.MEMBER or who.principal.org != org:
        raise _not_found("org")
    return org


def _admin(who: Caller) -> None:
    if who.principal.role != "admin":
        raise ApiError(Denial(403, "not_admin", "only an org admin may change this"))


@_refusals
async def create_request(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await json_body(request)
    _only(body, "org", "member", "justification", "duration_s", "scope")
    created = await _store(request).file(
        who.principal,
        org=body.get("org"),
        member=body.get("member"),
        justification=body.get("justification"),
        duration_s=body.get("duration_s"),
        scope=body.get("scope"),
    )
    return web.json_response(created.to_json(_now(request)), status=201)


def _float_query(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(Denial(422, "invalid_field", f"{name}: expected epoch seconds"))
    return value


@_refusals
async def list_requests(request: web.Request) -> web.Response:
    who = await caller(request)
    state_text = request.query.get("state") or None
    try:
        state = RequestState(state_text) if state_text else None
    except ValueError as exc:
        raise ApiError(
            Denial(
                422, "invalid_field", "state: one of " + ", ".join(s.value for s in RequestState)
            )
        ) from exc
    org = request.query.get("org") or None
    since, until = _float_query(request, "since"), _float_query(request, "until")
    store = _store(request)
    principal = who.principal
    if principal.kind is PrincipalKind.STAFF:
        found = await store.search(requester=principal, state=state, since=since, until=until)
        if org is not None:
            found = [r for r in found if r.org == org]
    else:
        if org is not None and org != principal.org:
            raise _not_found("org")
        found = await store.search(org=principal.org, state=state, since=since, until=until)
    now = _now(request)
    return web.json_response({"requests": [r.to_json(now) for r in found]})


@_refusals
async def show_request(request: web.Request) -> web.Response:
    who = await caller(request)
    found = await _visible(request, who)
    history = await _store(request).history(found.id)
    out = found.to_json(_now(request))
    out["history"] = [h.to_json() for h in history]
    return web.json_response(out)


async def _optional_body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    return await json_body(request)


# One workflow step on one visible request: the store call, given the checked JSON body.
_Step = Callable[[AccessStore, str, Principal, Mapping[str, Any]], Awaitable[AccessRequest]]


def _step(fields: tuple[str, ...], step: _Step, *, body_required: bool) -> Handler:
    """`POST /requests/{id}/<action>`: caller, body with only `fields`, visibility, then `step`."""

    @_refusals
    async def handler(request: web.Request) -> web.Response:
        who = await caller(request)
        body = await (json_body(request) if body_required else _optional_body(request))
        _only(body, *fields)
        found = await _visible(request, who)
        done = await step(_store(request), found.id, who.principal, body)
        return web.json_response(done.to_json(_now(request)))

    return handler


approve = _step(
    ("comment", "duration_s", "scope"),
    lambda store, rid, who, body: store.approve(
        rid,
        who,
        comment=body.get("comment"),
        duration_s=body.get("duration_s"),
        scope=body.get("scope"),
    ),
    body_required=True,
)
deny = _step(
    ("comment",),
    lambda store, rid, who, body: store.deny(rid, who, comment=body.get("comment")),
    body_required=True,
)
cancel = _step(
    ("comment",),
    lambda store, rid, who, body: store.cancel(rid, who, comment=body.get("comment")),
    body_required=False,
)
revoke = _step(
    ("comment",),
    lambda store, rid, who, body: store.revoke(rid, who, comment=body.get("comment")),
    body_required=False,
)


@_refusals
async def revoke_all(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await _optional_body(request)
    _only(body, "comment")
    org = _own_org(request, who)
    revoked = await _store(request).revoke_all(org, who.principal, comment=body.get("comment"))
    return web.json_response({"org": org, "revoked": revoked})


async def _approvers_json(request: web.Request, org: str) -> dict[str, Any]:
    redis = _store(request).redis
    explicit = await directory.explicit_approvers(redis, org)
    in_force = await directory.approvers(redis, org)
    return {
        "org": org,
        "explicit": explicit,
        "approvers": [{"id": m.id, "email": m.email, "name": m.name} for m in in_force],
    }


@_refusals
async def get_approvers(request: web.Request) -> web.Response:
    who = await caller(request)
    org = _own_org(request, who)
    return web.json_response(await _approvers_json(request, org))


@_refusals
async def put_approvers(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await json_body(request)
    _only(body, "approvers")
    org = _own_org(request, who)
    _admin(who)
    ids = body.get("approvers")
    if not isinstance(ids, list):
        raise ApiError(Denial(422, "invalid_field", "approvers: expected a list of member ids"))
    await directory.set_approvers(_store(request).redis, org, ids)
    return web.json_response(await _approvers_json(request, org))


@_refusals
async def get_settings(request: web.Request) -> web.Response:
    who = await caller(request)
    org = _own_org(request, who)
    settings = await load_settings(_store(request).redis, org)
    return web.json_response({"org": org, "settings": settings.to_json()})


@_refusals
async def put_settings(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await json_body(request)
    org = _own_org(request, who)
    _admin(who)
    redis = _store(request).redis
    settings = (await load_settings(redis, org)).merged(body)
    await save_settings(redis, org, settings)
    return web.json_response({"org": org, "settings": settings.to_json()})


@_refusals
async def impersonate(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await json_body(request)
    _only(body, "member", "duration_s", "scope")
    if who.principal.kind is not PrincipalKind.MEMBER:
        raise access_refusal(AccessNotFound("not_found", "no such org"))
    started = await _store(request).impersonate(
        who.principal,
        member=body.get("member"),
        duration_s=body.get("duration_s"),
        scope=body.get("scope", "write"),
    )
    return web.json_response(started.to_json(_now(request)), status=201)


def add_routes(app: web.Application) -> None:
    base = API_PREFIX
    app.router.add_post(f"{base}/requests", create_request)
    app.router.add_get(f"{base}/requests", list_requests)
    app.router.add_get(f"{base}/requests/{{id}}", show_request)
    app.router.add_post(f"{base}/requests/{{id}}/approve", approve)
    app.router.add_post(f"{base}/requests/{{id}}/deny", deny)
    app.router.add_post(f"{base}/requests/{{id}}/cancel", cancel)
    app.router.add_post(f"{base}/requests/{{id}}/revoke", revoke)
    app.router.add_post(f"{base}/orgs/{{org}}/revoke-all", revoke_all)
    app.router.add_get(f"{base}/orgs/{{org}}/approvers", get_approvers)
    app.router.add_put(f"{base}/orgs/{{org}}/approvers", put_approvers)
    app.router.add_get(f"{base}/orgs/{{org}}/settings", get_settings)
    app.router.add_put(f"{base}/orgs/{{org}}/settings", put_settings)
    app.router.add_post(f"{base}/impersonate", impersonate)
