"""The gateway as the benchmark measures it: the real app, a real grant, one login stand-in.

    python -m bench.gateway_peer --data-dir D --redis-url URL --upstream-port P   # READY <port>

It serves `create_app` with the handler settings of the real listeners, on plain HTTP
on loopback (wrk cannot set a TLS server name for hosts that do not resolve here). Every
stage is production code except the login: the session and MFA stages (app-session
cookie -> principal, TOTP age) are replaced by `LoggedIn`, which names the logged-in
staff member. The grant is real: a directory is seeded in Redis, Sam files an access
request for bob of acme and Alice (an acme admin) approves it, so the real grant stage
checks it on every request (from the watcher's cache while its subscription is healthy,
as in production). Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

from audit.writer import AuditWriter
from gateway.access import AccessStore
from gateway.access.service import access_service
from gateway.app import AUDIT, CLOCK, REDIS, STAGES, create_app
from gateway.flow import Flow
from gateway.heap import settle
from gateway.identity import Principal
from gateway.server import loop_factory
from tests.gateway.access.conftest import ALICE, ORG, SAM, seed_directory
from tests.gateway.gateway_process import serve_plain, write_config

REPLACED = ("session", "mfa")
STAND_IN = (
    "real app, real grant in Redis (real grant stage, watcher cache); only the session "
    "and MFA stages are replaced by a stand-in naming the logged-in staff member"
)


class LoggedIn:
    """Stands in for the session and MFA stages: every flow is `principal`'s, MFA fresh."""

    name = "session"

    def __init__(self, principal: Principal, app: web.Application) -> None:
        self.principal = principal
        self.app = app

    async def __call__(self, flow: Flow) -> None:
        flow.principal = self.principal
        flow.mfa_verified_at = self.app[CLOCK].now()


AUDIT_STAGES = ("audit_in", "audit_out")
WITHOUT_AUDIT = (
    "the same, with the audit-in and audit-out stages removed: a diagnostic of what the "
    "two audit records cost, never a way the gateway runs"
)


class Unrecorded:
    """Stands in for the audit-out stage in the diagnostic run: no record is written.

    It marks the outcome as handled so that the runner does not log every flow as a
    lost outcome (which would measure the log, not the gateway).
    """

    name = "audit_out"
    always_runs = True

    async def __call__(self, flow: Flow) -> None:
        flow.outcome_recorded = True


def without_audit(app: web.Application) -> None:
    stages = app[STAGES]
    stages[:] = [stage for stage in stages if stage.name not in AUDIT_STAGES]
    stages.append(Unrecorded())


def with_login_stand_in(app: web.Application) -> None:
    stages = app[STAGES]
    at = next(i for i, stage in enumerate(stages) if stage.name in REPLACED)
    stages[:] = [stage for stage in stages if stage.name not in REPLACED]
    stages.insert(at, LoggedIn(SAM, app))


async def approved_grant(app: web.Application) -> None:
    """Seed the directory, file and approve Sam's request; wait for the watcher to cache."""
    redis = app[REDIS]
    await seed_directory(redis)
    store = AccessStore(redis, app[CLOCK])
    request = await store.file(
        SAM,
        org=ORG,
        member="bob",
        justification="ticket 7: benchmark the forward path",
        duration_s=4 * 3600,
        scope="write",
    )
    await store.approve(request.id, ALICE)
    watcher = access_service(app).watcher
    for _ in range(500):
        if watcher.healthy:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the grant watcher's subscription did not come up")


async def settled(app: web.Application) -> None:
    """What `gateway.server.serve` does once serving: the start-up heap frozen."""
    settle()


async def report_batches(app: web.Application) -> None:
    """How well the audit group commit batched: printed to the log the benchmark shows."""
    writer = app[AUDIT]
    if not isinstance(writer, AuditWriter):
        return
    per_batch = writer.frames / max(1, writer.pipelines)
    print(
        f"audit: {writer.frames} frames accepted in {writer.pipelines} batches "
        f"({per_batch:.1f} frames per Redis command)",
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_peer")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument(
        "--without-audit", action="store_true", help="diagnostic only: " + WITHOUT_AUDIT
    )
    args = parser.parse_args()
    config = write_config(args.data_dir, args.upstream_port)

    async def run() -> None:
        app = create_app(config, redis_url=args.redis_url)
        with_login_stand_in(app)
        if args.without_audit:
            without_audit(app)
        app.on_startup.append(approved_grant)
        app.on_startup.append(settled)
        app.on_cleanup.append(report_batches)
        await serve_plain(config, app)

    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
