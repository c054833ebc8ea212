"""Session ends heard by this process: in-flight flows of an ended login, or of an ended
app session, are cut off.

Ending a console session (logout, idle or absolute lifetime over, the account disabled or
its credentials reset) publishes `end <session id>` on `keys.session_events_channel()`
from the same Lua script that deletes it (`ending`). `session_ends_ctx` (a `cleanup_ctx`
generator, after Redis) listens there until shutdown and aborts that session's flows in
this process (`InFlightFlows.abort_session`: streams cut, websockets closed with 1008,
audit outcome `aborted: session_ended`). Ending one routed host's app session (its
`/.gateway/logout`) publishes `end-app <app session id>` the same way (`app_sessions`),
and that app session's flows are aborted (`InFlightFlows.abort_app_session`).

Pub/sub delivers at most once and only while subscribed, so the events give immediacy and
a re-check gives the bound: on every (re)subscription and every RECHECK_EVERY_S while
flows are in flight, the console and app sessions of in-flight flows are read in one
pipelined round trip (`records.read_at_once`), each by the very read its lookup makes,
and judged by the very rule that lookup applies, by the gateway's Clock:

- a console session by `records.found_alive` (gone; absolute lifetime or idle timeout
  over; not made under its account's current session epoch; damaged);
- an app session by `app_sessions.judge_app_session` for the host its flows came in on
  (everything the session stage checks: the app record, its host, its console session
  as above and naming the same principal, the TOTP time, the account present and not
  disabled), and then by the MFA stage's `records.mfa_fresh`.

A session so found dead has its flows aborted (`session_ended`). One whose record is
gone, or whose console session is dead, is ended for good: a dead console session that
is still stored is ended in Redis as a lookup would end it, and flows of either that
join later are aborted as they join. Any other refusal (a stale TOTP time, a disabled
account, a damaged record, a read Redis answered with an error) aborts only the flows
in flight: the records stay as the lookup leaves them, and the next request is judged
by its own lookup (a step-up, for instance, lets the same app session through again).
The re-check never touches a session's last-seen time.

A re-check that cannot reach Redis raises (so the listener reconnects and re-checks),
after counting it in `gateway_session_recheck_failures_total{failure="round_trip"}` and
logging it; it ends nothing, since an unreachable Redis is no verdict on anyone. Each
request still makes its own lookup, which refuses while Redis is down, and the forward
stage still ends each flow when its grant does. Error replies for single sessions count
as `failure="reply"`. Nothing here touches the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import Counter

from gateway import keys
from gateway.appkeys import CLOCK, CONFIG, IN_FLIGHT, REDIS
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.flow import SESSION_ENDED, Flow, InFlightFlows
from gateway.listeners import keep_listening, stop
from gateway.sessions.app_sessions import AppSessions, judge_app_session
from gateway.sessions.ending import end_console_session
from gateway.sessions.records import (
    found_alive,
    json_object,
    mfa_fresh,
    read_at_once,
    record_read,
)

log = logging.getLogger(__name__)

MAX_SESSION_ID = 128  # longer than any id the gateway makes (records.sid_of: 64 hex)
RECHECK_EVERY_S = 5.0
ROUND_WITHIN_S = 3.0  # one round of listening and re-checking; longer means Redis is gone


RECHECK_FAILURES = Counter(
    "gateway_session_recheck_failures_total",
    "Re-checks of in-flight sessions that could not read Redis (round_trip: none judged, "
    "retried on reconnecting; reply: one session unreadable, its flows ended)",
    ["failure"],
)

END_CONSOLE = "end"  # end <console session id>
END_APP = "end-app"  # end-app <app session id>


def session_event(data: bytes | str) -> tuple[str, str] | None:
    """(verb, id) of an `end <session id>` or `end-app <app session id>` message; None when
    it is neither."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    verb, _, session_id = text.partition(" ")
    if verb not in (END_CONSOLE, END_APP) or not session_id or len(session_id) > MAX_SESSION_ID:
        return None
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in session_id):
        return None
    return verb, session_id


def ended_session_id(data: bytes | str) -> str | None:
    """The console session id of an `end <session id>` message; None when it is not one."""
    event = session_event(data)
    return event[1] if event is not None and event[0] == END_CONSOLE else None


class SessionEnds:
    """Listens for ended console and app sessions and ends their in-flight flows."""

    def __init__(
        self, redis: aioredis.Redis, in_flight: InFlightFlows, clock: Clock, limits: Sessions
    ) -> None:
        self.redis = redis
        self.in_flight = in_flight
        self.clock = clock
        self.limits = limits
        self.app_sessions = AppSessions(redis, clock, limits)

    def on_event(self, data: bytes | str) -> None:
        event = session_event(data)
        if event is None:
            log.warning("unreadable session event %r ignored", data[:200])
            return
        verb, session_id = event
        if verb == END_APP:
            ended = self.in_flight.abort_app_session(session_id)
            if ended:
                log.info("app session ended: ended %d in-flight flow(s)", ended)
            return
        ended = self.in_flight.abort_session(session_id)
        if ended:
            log.info("console session ended: ended %d in-flight flow(s)", ended)

    async def recheck(self) -> int:
        """Judge every in-flight console and app session as its lookup would, in one Redis
        round trip, and end the flows of those found dead; returns how many sessions (of
        either kind) were found dead. Raises when Redis cannot be read (nothing ended)."""
        session_ids = sorted(self.in_flight.session_ids())
        # The flows judged are those in flight when the read is sent: one that joins while
        # it is on its way passed its own lookup after this read.
        app_flows = {
            aid: self.in_flight.of_app_session(aid) for aid in self.in_flight.app_session_ids()
        }
        app_session_ids = sorted(app_flows)
        if not session_ids and not app_session_ids:
            return 0
        reads = [record_read(sid) for sid in session_ids]
        reads += [self.app_sessions.read_of(aid) for aid in app_session_ids]
        try:
            found = await read_at_once(self.redis, reads)
        except Exception as exc:
            RECHECK_FAILURES.labels("round_trip").inc()
            log.warning(
                "session re-check could not read Redis (%s): %d console and %d app session(s)"
                " stay judged by each request's own lookup until it succeeds",
                exc,
                len(session_ids),
                len(app_session_ids),
            )
            raise
        consoles, apps = found[: len(session_ids)], found[len(session_ids) :]
        unreadable = sum(isinstance(reply, Exception) for reply in found)
        if unreadable:
            RECHECK_FAILURES.labels("reply").inc(unreadable)
            log.warning("session re-check: %d session(s) unreadable; their flows end", unreadable)
        now = self.clock.now()
        dead_consoles: dict[str, str] = {}  # stored but dead: ended as a lookup would
        ended = 0
        for session_id, reply in zip(session_ids, consoles, strict=True):
            # SECURITY: judged by the same rule and Clock as every lookup, so a login whose
            # lifetime ran out loses its open flows within a re-check, not at its next request.
            if found_alive(reply, now, self.limits):
                continue
            ended += 1
            if isinstance(reply, Exception):
                _abort(self.in_flight.of_session(session_id))  # unreadable: not for good
                continue
            self.in_flight.abort_session(session_id)
            if isinstance(reply, list) and reply:
                record = json_object(reply[0]) or {}
                principal = record.get("principal")
                dead_consoles[session_id] = principal if isinstance(principal, str) else "-"
        for app_session_id, reply in zip(app_session_ids, apps, strict=True):
            flows = app_flows[app_session_id]
            if not flows or self._app_session_alive(
                app_session_id, reply, flows, now, dead_consoles
            ):
                continue
            ended += 1
            if reply == []:
                # SECURITY: its record is gone (ended): flows that join later end as well.
                self.in_flight.abort_app_session(app_session_id)
            else:
                _abort(flows)
        for session_id, principal in dead_consoles.items():
            self.in_flight.abort_session(session_id)
            await end_console_session(self.redis, session_id, principal)
        return ended

    def _app_session_alive(
        self,
        app_session_id: str,
        reply: object,
        flows: frozenset[Flow],
        now: float,
        dead_consoles: dict[str, str],
    ) -> bool:
        alive = True
        for host in sorted({flow.host for flow in flows}):
            # SECURITY: the session stage's own judgement, for the host the flows came in
            # on, then the MFA stage's: what a request with this cookie would meet now.
            verdict = judge_app_session(reply, app_session_id, host, now, self.limits)
            if verdict.dead_console is not None:
                dead_consoles.setdefault(verdict.dead_console, verdict.dead_principal)
            login = verdict.login
            alive = alive and login is not None and mfa_fresh(login.mfa_at, now, self.limits)
        return alive

    async def listen_once(self) -> None:
        """Subscribe and handle events until the subscription fails (then raise)."""
        pubsub = self.redis.pubsub()
        loop = asyncio.get_running_loop()
        try:
            await pubsub.subscribe(keys.session_events_channel())
            last_recheck = loop.time()
            while True:
                async with asyncio.timeout(ROUND_WITHIN_S):
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None and message["type"] == "subscribe":
                        # Ends published while nobody here listened were missed: ask Redis.
                        await self.recheck()
                        last_recheck = loop.time()
                    elif message is not None and message["type"] == "message":
                        self.on_event(message["data"])
                    if loop.time() - last_recheck >= RECHECK_EVERY_S:
                        # SECURITY: a subscription that silently stopped delivering cannot
                        # keep an ended login's flows running for longer than this.
                        await self.recheck()
                        await pubsub.ping()
                        last_recheck = loop.time()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def run(self) -> None:
        """Listen forever (an app background task), reconnecting after any failure."""
        await keep_listening(self.listen_once, "session events", "reconnecting")


def _abort(flows: frozenset[Flow]) -> None:
    """Abort these flows now, remembering nothing (the session may be let through again)."""
    for flow in flows:
        flow.abort(SESSION_ENDED)


async def session_ends_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run `SessionEnds` for the app's in-flight flows until the app stops."""
    ends = SessionEnds(app[REDIS], app[IN_FLIGHT], app[CLOCK], app[CONFIG].sessions)
    task = asyncio.create_task(ends.run())
    yield
    await stop([task])
