"""Fixtures for the access workflow: a seeded directory in the real Redis and the people in it.

The directory is written as the account store writes it (one hash per account), so these
tests read exactly what production reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway import keys
from gateway.access import AccessStore
from gateway.appkeys import CLOCK, CONFIG, IN_FLIGHT, REDIS
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.embedded_redis import EmbeddedRedis
from gateway.flow import InFlightFlows
from gateway.identity import Principal, PrincipalKind
from tests.gateway.access.relay import Relay
from tests.gateway.access.smtp import Inbox, free_port, start_smtp

ORG = "acme"
OTHER_ORG = "globex"


def staff(staff_id: str) -> Principal:
    return Principal(PrincipalKind.STAFF, staff_id, f"{staff_id}@vendor.example", staff_id.title())


def member(org: str, member_id: str, role: str = "member") -> Principal:
    return Principal(
        PrincipalKind.MEMBER, member_id, f"{member_id}@{org}.example", member_id.title(), org, role
    )


SAM = staff("sam")
SUE = staff("sue")
ALICE = member(ORG, "alice", "admin")
CAROL = member(ORG, "carol", "admin")
ERIN = member(ORG, "erin", "admin")
BOB = member(ORG, "bob")
DAVE = member(ORG, "dave")  # not impersonable
FRANK = member(ORG, "frank")
GINA = member(OTHER_ORG, "gina", "admin")
HANK = member(OTHER_ORG, "hank")


async def write_account(
    redis: aioredis.Redis,
    who: Principal,
    *,
    impersonable: bool = True,
    disabled: bool = False,
    person: str = "",
) -> None:
    fields: dict[Any, Any] = {
        "kind": who.kind.value,
        "id": who.id,
        "email": who.email,
        "name": who.name,
        "org": who.org or "",
        "role": who.role or "",
        "impersonable": "1" if impersonable else "0",
        "disabled": "1" if disabled else "0",
    }
    if person:
        fields["person"] = person  # accounts sharing a person id are one person
    if who.kind is PrincipalKind.STAFF:
        await redis.hset(keys.staff(who.id), mapping=fields)
        await redis.sadd(keys.staff_index(), who.id)
        return
    assert who.org is not None
    await redis.hset(keys.member(who.org, who.id), mapping=fields)
    await redis.sadd(keys.org_members(who.org), who.id)


async def seed_directory(redis: aioredis.Redis) -> None:
    for org, name in ((ORG, "Acme Corp"), (OTHER_ORG, "Globex")):
        await redis.hset(keys.org(org), mapping={"id": org, "name": name})
        await redis.sadd(keys.org_index(), org)
    for who in (SAM, SUE, ALICE, CAROL, ERIN, BOB, FRANK, GINA, HANK):
        await write_account(redis, who)
    await write_account(redis, DAVE, impersonable=False)


@pytest.fixture
async def directory(redis: aioredis.Redis) -> aioredis.Redis:
    await seed_directory(redis)
    return redis


@pytest.fixture
async def relay(redis_server: EmbeddedRedis) -> AsyncIterator[Relay]:
    """A loopback relay to the test Redis that can go silent or slow (`relay.Relay`)."""
    async with Relay(redis_server.socket_path) as running:
        yield running


@pytest.fixture
async def relayed(relay: Relay) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=relay.port)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def second_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """Another real redis-server: the other side of a failover."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-second"), persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def second_redis(second_redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(second_redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[Inbox, int]]:
    """A plain SMTP server on loopback catching every mail: its inbox and its port."""
    found, port = Inbox(), free_port()
    controller = start_smtp(found, port)
    yield found, port
    controller.stop()


@pytest.fixture
async def store(directory: aioredis.Redis, clock: ManualClock) -> AccessStore:
    return AccessStore(directory, clock)


@pytest.fixture
async def stores(
    directory: aioredis.Redis, redis_url: str, clock: ManualClock
) -> AsyncIterator[list[AccessStore]]:
    """Five access stores, each on its own Redis connection: for moves made at once."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(5)]
    yield [AccessStore(client, clock) for client in clients]
    for client in clients:
        await client.aclose()


def service_app(redis: aioredis.Redis, clock: ManualClock, data_dir: Path) -> web.Application:
    """An app holding only what the access service reads at start (for `access_ctx`)."""
    app = web.Application()
    app[CONFIG] = GatewayConfig(
        console_url="https://gateway.localhost:8443", data_dir=data_dir, listeners=()
    )
    app[CLOCK] = clock
    app[REDIS] = redis
    app[IN_FLIGHT] = InFlightFlows()
    return app


async def approved(
    store: AccessStore,
    duration_s: int = 3600,
    scope: str = "write",
    requester: Principal | None = None,
) -> str:
    """File a request for bob of acme (Sam's unless `requester` is given), Alice approves."""
    request = await store.file(
        requester or SAM,
        org=ORG,
        member="bob",
        justification="ticket 5: checkout fails",
        duration_s=duration_s,
        scope=scope,
    )
    await store.approve(request.id, ALICE)
    return request.id
