"""Console sessions: aiohttp-session with a Redis storage judged by the gateway's Clock.

A logged-in session's cookie (`__Host-gw_console`: Secure, HttpOnly, SameSite=Lax,
Path=/, no Domain) carries a random 256-bit token; Redis holds the session under the
token's SHA-256. Before a login is complete nothing is written to Redis: the same
session mapping travels in the signed, short-lived `__Host-gw_prelogin` cookie
(`prelogin`), so anonymous page views cannot fill Redis. The session maps:

    csrf       the CSRF token for forms (hidden field) and API calls (X-CSRF-Token)
    principal  the principal key once password AND TOTP were verified
    mfa_at     Clock time of the last TOTP check (step-up renews it)
    login_at   Clock time of the login
    epoch      the account's session epoch, as the login read it before any credential
    pending    {principal, at, proof, epoch}: password verified, TOTP still to come
    enrol      {principal, token_hash, at, proof, epoch}: enrolment under way
               (proof: a keyed hash of the password hash then proven; a reset voids it)
    return     signed return address to a routed host; next: a console path

`rotate` gives a fresh id at login (the old session and its cookie die) and creates the
logged-in session at once, only if the account's session epoch has not moved since the
login read it (else `LoginRefused` 409 `sessions_ended`, and no session). A save never
resurrects a session ended meanwhile (SET XX). Idle timeout, absolute lifetime and the
epoch are checked on every load (the first two by the Clock, limits from `sessions:`).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_session import AbstractStorage, Session, SessionData

from gateway import keys
from gateway.accounts.errors import LoginRefused
from gateway.appkeys import CLOCK, CONFIG, REDIS
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.cookies import CONSOLE_SESSION, PRELOGIN
from gateway.sessions.ending import end_console_session
from gateway.sessions.handoff import handoff_key
from gateway.sessions.prelogin import PreLoginSeal, PreLoginTooLarge
from gateway.sessions.records import create_login_record, live_record, sid_of, valid_token

log = logging.getLogger(__name__)

PENDING_TTL_S = 300.0  # a verified password waits this long for its TOTP code


@dataclass(frozen=True)
class ConsoleLogin:
    """A fully logged-in console session (password and TOTP)."""

    principal_key: str
    session_id: str  # the sid (hash of the cookie token)
    mfa_at: float


class ClockedRedisStorage(AbstractStorage):
    """The storage installed on the console app; Redis, Clock and limits come from the app."""

    def __init__(self) -> None:
        super().__init__(
            cookie_name=CONSOLE_SESSION,
            domain=None,  # SECURITY: __Host- cookies are host-only ...
            path="/",  # ... for the whole origin ...
            secure=True,  # ... and only over HTTPS
            httponly=True,
            samesite="Lax",
        )

    def save_cookie(
        self, response: web.StreamResponse, cookie_data: str, *, max_age: int | None = None
    ) -> None:
        if cookie_data:
            super().save_cookie(response, cookie_data, max_age=max_age)
            return
        # A browser ignores a __Host- cookie (even its deletion) without these attributes.
        response.del_cookie(self.cookie_name, path="/", secure=True, httponly=True, samesite="Lax")

    @staticmethod
    def parts(request: web.Request) -> tuple[aioredis.Redis, Clock, Sessions]:
        config = request.config_dict[CONFIG]
        return request.config_dict[REDIS], request.config_dict[CLOCK], config.sessions

    def prelogin(self, request: web.Request) -> PreLoginSeal:
        config = request.config_dict[CONFIG]
        clock = request.config_dict[CLOCK]
        return PreLoginSeal(
            handoff_key(config.data_dir), clock, ttl_s=config.sessions.idle_timeout_s
        )

    async def load_session(self, request: web.Request) -> Session:
        token = self.load_cookie(request)
        if token is not None and valid_token(token):
            redis, clock, limits = self.parts(request)
            record = await live_record(redis, sid_of(token), clock, limits)
            # Only logged-in sessions live in Redis (a record without a principal is an
            # older pre-login one: ignored, its TTL ends it).
            if record is not None and isinstance(record.get("principal"), str):
                data: SessionData = {"created": int(record["created_at"]), "session": record}
                return Session(token, data=data, new=False)
        state = self.prelogin(request).open(request.cookies.get(PRELOGIN))
        if not state:
            return Session(None, data=None, new=True)
        created = int(request.config_dict[CLOCK].now())
        fresh: SessionData = {"created": created, "session": state}
        return Session(None, data=fresh, new=True)

    def save_prelogin(
        self, request: web.Request, response: web.StreamResponse, state: dict[str, Any]
    ) -> None:
        """Keep a pre-login state in its signed cookie (none left when it is empty)."""
        value = ""
        if state:
            try:
                value = self.prelogin(request).seal(state)
            except PreLoginTooLarge:
                log.warning("pre-login state too large for its cookie: not kept")
        if value:
            # SECURITY: host-only (__Host-, no Domain), HTTPS-only, never sent cross-site
            # with a POST; its signature and expiry are checked at every load.
            response.set_cookie(
                PRELOGIN,
                value,
                path="/",
                secure=True,
                httponly=True,
                samesite="Lax",
                max_age=int(request.config_dict[CONFIG].sessions.idle_timeout_s),
            )
        elif PRELOGIN in request.cookies:
            response.del_cookie(PRELOGIN, path="/", secure=True, httponly=True, samesite="Lax")

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        redis, clock, limits = self.parts(request)
        record: dict[str, Any] = dict(session)
        if not isinstance(record.get("principal"), str):
            # SECURITY: nothing reaches Redis before a login is complete (an anonymous
            # flood of page views cannot fill it); the state travels signed instead.
            if session.identity is not None:
                # A logged-in session emptied (logout) or stripped of its principal: ended.
                await end_console_session(redis, sid_of(str(session.identity)), "-")
                self.save_cookie(response, "", max_age=None)
            elif CONSOLE_SESSION in request.cookies:
                self.save_cookie(response, "", max_age=None)  # a dead session's cookie
            self.save_prelogin(request, response, record)
            return
        self.save_prelogin(request, response, {})  # logged in: the pre-login state is done
        now = clock.now()
        record.setdefault("created_at", now)
        record["last_seen"] = now
        ttl = int(limits.absolute_lifetime_s) + 60
        created = session.new or session.identity is None
        if created:
            token = session.identity if valid_token(session.identity) else None
            if token is None:
                token = secrets.token_urlsafe(32)
                session.set_new_identity(token)
            # SECURITY: a logged-in session only under the epoch its login read (`rotate`
            # creates them; this is the same rule for any other path).
            written: object = await create_login_record(redis, sid_of(token), record, ttl)
        else:
            token = str(session.identity)
            written = await redis.set(
                keys.console_session(sid_of(token)), json.dumps(record), xx=True, keepttl=True
            )
        if not written:
            # Ended by someone else meanwhile (logout elsewhere, disable): stay ended.
            self.save_cookie(response, "", max_age=None)
            return
        if not created:
            # Garbage collection only: the set outlives each of its sessions (their lifetime
            # is capped), so ending them all on disable still finds every one.
            principal_set = keys.principal_sessions(record["principal"])
            async with redis.pipeline(transaction=True) as pipe:
                pipe.sadd(principal_set, sid_of(token))
                pipe.expire(principal_set, ttl)
                await pipe.execute()
        self.save_cookie(response, token, max_age=limits.absolute_lifetime_s)


STORAGE = ClockedRedisStorage()
SESSION: web.RequestKey[Session] = web.RequestKey("gateway_console_session", Session)


async def get_session(request: web.Request) -> Session:
    """This request's console session (loaded once, saved by `session_middleware`)."""
    session = request.get(SESSION)
    if session is None:
        session = await STORAGE.load_session(request)
        request[SESSION] = session
    return session


async def new_session(request: web.Request) -> Session:
    session = await STORAGE.new_session()
    request[SESSION] = session
    return session


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp-session's middleware, keyed by a typed `web.RequestKey`."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        session = request.get(SESSION)
        if session is not None and session._changed:
            await STORAGE.save_session(request, exc, session)
        raise
    session = request.get(SESSION)
    if session is not None and session._changed and isinstance(response, web.Response):
        if response.prepared:
            raise RuntimeError("cannot save the console session into a prepared response")
        await STORAGE.save_session(request, response, session)
    return response


def csrf_token(session: Session) -> str:
    """The session's CSRF token, made on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: Session, presented: str | None) -> bool:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not presented:
        return False
    # SECURITY: constant-time comparison of the anti-CSRF token.
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


def current_login(session: Session) -> ConsoleLogin | None:
    principal = session.get("principal")
    mfa_at = session.get("mfa_at")
    if session.identity is None or not isinstance(principal, str):
        return None
    if not isinstance(mfa_at, int | float):
        return None
    return ConsoleLogin(principal, sid_of(str(session.identity)), float(mfa_at))


def sessions_ended() -> LoginRefused:
    return LoginRefused(
        "sessions_ended",
        "every session of this account was ended while this login was under way (disabled, "
        "or its password or TOTP reset): log in again",
        status=409,
    )


async def rotate(request: web.Request, principal_key: str, now: float, *, epoch: int) -> Session:
    """Log in: a new session id replaces the old one, keeping only where to go next.

    The new session is created in Redis at once, and only if the account's session epoch
    is still `epoch` (read with the account before its credentials were checked);
    otherwise `LoginRefused` 409 `sessions_ended`, and this request keeps no session.
    """
    old = await get_session(request)
    carried = {k: old[k] for k in ("return", "next") if k in old}
    redis, _, limits = STORAGE.parts(request)
    if old.identity is not None:
        await end_console_session(
            redis, sid_of(str(old.identity)), str(old.get("principal") or "-")
        )
    token = secrets.token_urlsafe(32)
    record: dict[str, Any] = {
        **carried,
        "principal": principal_key,
        "login_at": now,
        "mfa_at": now,
        "created_at": now,
        "last_seen": now,
        "epoch": epoch,
        "csrf": secrets.token_urlsafe(32),
    }
    ttl = int(limits.absolute_lifetime_s) + 60
    if not await create_login_record(redis, sid_of(token), record, ttl):
        await new_session(request)  # nothing of this login is kept, not even its CSRF token
        raise sessions_ended()
    session = Session(token, data={"created": int(now), "session": record}, new=False)
    # The middleware's save (SET XX: never a re-creation) then sets the cookie.
    session.changed()
    request[SESSION] = session
    return session


async def end(request: web.Request) -> str | None:
    """Log out: the session and all its app sessions end now. Returns the ended sid."""
    session = await get_session(request)
    sid = sid_of(str(session.identity)) if session.identity is not None else None
    if sid is not None:
        principal = session.get("principal")
        await end_console_session(
            request.config_dict[REDIS], sid, principal if isinstance(principal, str) else "-"
        )
    session.invalidate()  # the middleware's save then drops the cookie
    return sid
