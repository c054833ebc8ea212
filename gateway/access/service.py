"""The access workflow inside the running gateway: its app state and background tasks.

`access_ctx` (a `cleanup_ctx` generator, added after Redis and the audit writer) builds
the `AccessService` under `ACCESS` and runs, until shutdown: the grant watcher (pub/sub,
cache, in-flight aborts), the sweeper (lapse, expiry), the notices loop (outbox -> audit
records and queued mail) and, when `smtp` is configured, the mail sender.
"""

from __future__ import annotations

import asyncio
import contextlib
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

log = logging.getLogger(__name__)


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
    # A cancel that lands inside a Redis call can be swallowed there; cancel again until
    # every loop has ended.
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        await service.watcher.flush_usage()  # the last second's request counts
    except Exception:
        log.exception("request counts of the last second not saved at shutdown")
