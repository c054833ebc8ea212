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
pipelined round trip. A console session has ended when its record is gone or when the
rule every lookup applies (`records.found_alive`: absolute lifetime and idle timeout by
the gateway's Clock, the account's session epoch) says it is dead; such a session is
then ended in Redis as a lookup would end it. An app session has no lifetime of its own
(it lives while its console session does): it has ended when its record is gone. The
re-check never touches a session's last-seen time. Nothing here touches the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from gateway import keys
from gateway.appkeys import CLOCK, CONFIG, IN_FLIGHT, REDIS
from gateway.clock import Clock
from gateway.config import Sessions
from gateway.flow import InFlightFlows
from gateway.listeners import keep_listening, stop
from gateway.sessions.ending import end_console_session
from gateway.sessions.records import found_alive, json_object, read_record

log = logging.getLogger(__name__)

MAX_SESSION_ID = 128  # longer than any id the gateway makes (records.sid_of: 64 hex)
RECHECK_EVERY_S = 5.0
ROUND_WITHIN_S = 3.0  # one round of listening and re-checking; longer means Redis is gone


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
        """End the flows of in-flight console sessions that are no longer alive and of
        in-flight app sessions whose record is gone; returns how many sessions (of either
        kind) were found ended."""
        session_ids = sorted(self.in_flight.session_ids())
        app_session_ids = sorted(self.in_flight.app_session_ids())
        if not session_ids and not app_session_ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                await read_record(pipe, session_id)  # queued, answered by execute()
            for app_session_id in app_session_ids:
                pipe.exists(keys.app_session(app_session_id))
            found: list[Any] = await pipe.execute()
        consoles, apps = found[: len(session_ids)], found[len(session_ids) :]
        now = self.clock.now()
        # SECURITY: judged by the same rule and Clock as every lookup, so a login whose
        # lifetime ran out loses its open flows within a re-check, not at its next request.
        ended = [
            (sid, reply)
            for sid, reply in zip(session_ids, consoles, strict=True)
            if not found_alive(reply, now, self.limits)
        ]
        for session_id, reply in ended:
            self.in_flight.abort_session(session_id)
            if isinstance(reply, list) and reply:
                # Dead but still stored: end it everywhere, as a lookup finding it would.
                record = json_object(reply[0]) or {}
                principal = record.get("principal")
                await end_console_session(
                    self.redis, session_id, principal if isinstance(principal, str) else "-"
                )
        ended_apps = [aid for aid, exists in zip(app_session_ids, apps, strict=True) if not exists]
        for app_session_id in ended_apps:
            self.in_flight.abort_app_session(app_session_id)
        return len(ended) + len(ended_apps)

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


async def session_ends_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run `SessionEnds` for the app's in-flight flows until the app stops."""
    ends = SessionEnds(app[REDIS], app[IN_FLIGHT], app[CLOCK], app[CONFIG].sessions)
    task = asyncio.create_task(ends.run())
    yield
    await stop([task])
