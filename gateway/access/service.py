"""The access workflow inside the running gateway: its app state and background tasks.

`access_ctx` (a `cleanup_ctx` generator, added after Redis and the audit writer) builds
the `AccessService` under `ACCESS` and runs, until shutdown: the grant watcher (pub/sub,
cache, in-flight aborts), the sweeper (lapse, expiry), the notices loop (outbox -> audit
records and queued mail) and, when `smtp` is configured, the mail sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.helpers import ChainMapProxy

from gateway.access.mail import MailQueue
from gateway.access.notices import Notices
from gateway.access.sender import MailSender
from gateway.access.store import AccessStore
from gateway.access.sweeper import Sweeper
from gateway.access.watcher import GrantWatcher
from gateway.appkeys import AUDIT, CLOCK, CONFIG, IN_FLIGHT, REDIS
from gateway.listeners import stop

log = logging.getLogger(__name__)

# How long the stop waits for the last request counts to be saved.
FINAL_FLUSH_WITHIN_S = 5.0
SHOWN_GRANTS = 20  # grants named in the log line of counts not saved


@dataclass(frozen=True)
class AccessService:
    store: AccessStore
    watcher: GrantWatcher
    mail: MailQueue
    notices: Notices
    sweeper: Sweeper


ACCESS = web.AppKey("gateway_access", AccessService)


def access_service(state: web.Application | ChainMapProxy) -> AccessService:
    """The service from the gateway app, or from a console request's `config_dict`."""
    found = state.get(ACCESS)
    if found is None:
        # SECURITY: mis-wiring denies; it never skips the check.
        raise RuntimeError("the access workflow is not wired into this app (access_ctx)")
    return found


async def _notices_loop(notices: Notices) -> None:
    while True:
        try:
            await notices.process_once(block_ms=1000)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notices round failed; retrying")
            await asyncio.sleep(1.0)


async def access_ctx(app: web.Application) -> AsyncIterator[None]:
    config, clock, redis = app[CONFIG], app[CLOCK], app[REDIS]
    store = AccessStore(redis, clock)
    mail = MailQueue(redis, clock)
    audit = app.get(AUDIT)
    service = AccessService(
        store=store,
        watcher=GrantWatcher(redis, clock, app[IN_FLIGHT]),
        mail=mail,
        notices=Notices(
            redis,
            store,
            mail,
            console_url=config.console_url,
            audit=audit.append if audit is not None else None,
        ),
        sweeper=Sweeper(store),
    )
    app[ACCESS] = service
    work: list[Coroutine[Any, Any, None]] = [
        service.watcher.run(),
        service.sweeper.run(),
        _notices_loop(service.notices),
    ]
    if config.smtp is not None:
        work.append(MailSender(mail, config.smtp).run())
    tasks = [asyncio.create_task(w) for w in work]
    yield
    await stop(tasks)
    await service.notices.leave()
    await _final_flush(service.watcher)


async def _final_flush(watcher: GrantWatcher) -> None:
    """Save the last second's request counts, giving a silent Redis FINAL_FLUSH_WITHIN_S."""
    try:
        async with asyncio.timeout(FINAL_FLUSH_WITHIN_S):
            await watcher.flush_usage()
    except Exception as exc:
        # A shutdown must not wait on Redis for ever: say what is lost and go on.
        why = repr(exc)
        if isinstance(exc, TimeoutError):
            why = f"Redis gave no answer within {FINAL_FLUSH_WITHIN_S} s"
        counts = watcher.unflushed()
        shown = ", ".join(f"{grant_id}: {n}" for grant_id, n in counts.most_common(SHOWN_GRANTS))
        more = len(counts) - SHOWN_GRANTS
        log.error(
            "request counts not saved at shutdown (%s): %d request(s) of %d grant(s): %s%s",
            why,
            counts.total(),
            len(counts),
            shown,
            f" and {more} more" if more > 0 else "",
        )
