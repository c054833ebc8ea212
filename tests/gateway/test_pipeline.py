"""The fail-closed runner: denials, exceptions and audit failures forward nothing, and every
flow ends in exactly one audit outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY

from gateway.app import STAGES
from gateway.embedded_redis import EmbeddedRedis
from gateway.flow import Flow
from tests.gateway.proxyharness import HOST, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]


class Explodes:
    """A stage that fails the way a bug would."""

    name = "explodes"

    async def __call__(self, flow: Flow) -> None:
        raise RuntimeError("secret internal detail")


def _insert_before(name: str, stage: Any) -> Any:
    def customise(app: web.Application) -> None:
        stages = app[STAGES]
        stages.insert([s.name for s in stages].index(name), stage)

    return customise


async def _get(gw: Gateway, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + path, headers={"Host": HOST, **headers}) as response,
    ):
        return response.status, await response.json()


def _outcomes(bodies: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [
        b
        for b in bodies
        if b.get("record") in ("http.outcome", "http.denial")
        and b.get("event", {}).get("id") == request_id
    ]


def _lost() -> float:
    return REGISTRY.get_sample_value("gateway_audit_outcome_lost_total") or 0.0


async def test_forwarded_flow_has_one_attempt_and_one_outcome(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    status, _ = await _get(gw, "/echo?x=1")
    assert status == 200
    bodies = await gw.audit_settled(1)
    attempts = [b for b in bodies if b["record"] == "http.attempt"]
    assert len(attempts) == 1
    rid = attempts[0]["event"]["id"]
    outcomes = _outcomes(bodies, rid)
    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert outcome["record"] == "http.outcome"
    assert outcome["http"]["response"]["status_code"] == 200
    assert outcome["url"]["path"] == "/echo"
    assert outcome["url"]["query"] == "x=1"
    assert outcome["user"]["id"] == "sam"
    assert outcome["user"]["effective"]["id"] == "bob"
    assert outcome["gateway"]["grant"]["id"] == "g-1"
    assert outcome["gateway"]["decision"]["result"] == "allow"
    assert outcome["http"]["response"]["bytes"] > 0
    assert "total" in outcome["gateway"]["timings"]


async def test_policy_denial_is_audited_once_and_not_forwarded(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    status, body = await _get(gw, "/admin/users")
    assert status == 403
    assert body["error"] == "policy_denied"
    bodies = await gw.audit_bodies()
    assert [b for b in bodies if b["record"] == "http.attempt"] == []
    outcomes = _outcomes(bodies, body["request_id"])
    assert len(outcomes) == 1
    assert outcomes[0]["record"] == "http.denial"
    assert outcomes[0]["error"]["code"] == "policy_denied"
    assert outcomes[0]["gateway"]["decision"]["result"] == "deny"
    assert gw.upstream.received == []


async def test_without_a_grant_nothing_is_forwarded(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(grant=False)
    status, body = await _get(gw, "/echo")
    assert status == 403
    assert body["error"] == "no_grant"
    assert gw.upstream.received == []
    assert len(_outcomes(await gw.audit_bodies(), body["request_id"])) == 1


async def test_production_stages_deny_an_unauthenticated_request(
    gateway_factory: GatewayFactory,
) -> None:
    from gateway.stages.grant import GrantLookup
    from gateway.stages.mfa import MfaCheck
    from gateway.stages.session import SessionCheck

    def production(app: web.Application) -> None:
        stages = app[STAGES]
        stages[1:2] = [SessionCheck(app), MfaCheck(app), GrantLookup(app)]

    gw = await gateway_factory(customise=production)
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/echo", headers={"Host": HOST}, allow_redirects=False) as response,
    ):
        assert response.status in (302, 303, 401)
        rid = response.headers["X-Request-Id"]
    assert gw.upstream.received == []
    assert len(_outcomes(await gw.audit_bodies(), rid)) == 1


async def test_an_exception_in_a_stage_is_a_500_denial(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(customise=_insert_before("inject", Explodes()))
    status, body = await _get(gw, "/echo")
    assert status == 500
    assert body["error"] == "internal_error"
    assert "secret" not in body["reason"]
    assert gw.upstream.received == []
    outcomes = _outcomes(await gw.audit_bodies(), body["request_id"])
    assert len(outcomes) == 1
    assert outcomes[0]["error"]["code"] == "internal_error"


async def test_audit_down_is_503_and_nothing_is_forwarded(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    private = EmbeddedRedis(tmp_path / "private-redis", persistent=False)
    private.start()
    try:
        gw = await gateway_factory(redis_url_override=private.url)
        status, _ = await _get(gw, "/echo")
        assert status == 200
        before = _lost()
        private.stop()
        status, body = await _get(gw, "/echo")
        assert status == 503
        assert body["error"] == "audit_unavailable"
        assert len(gw.upstream.received) == 1
        # the denial's own outcome could not be written either: counted, not silent
        assert _lost() >= before + 1
    finally:
        private.stop()


async def test_abort_cuts_a_streaming_response(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    in_flight = gw.in_flight
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/sse", headers={"Host": HOST}) as response,
    ):
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first.startswith(b"id: 1")
        rid = response.headers["X-Gateway-Request-Id"]
        assert len(in_flight) == 1
        assert in_flight.abort_grant("g-1", "grant revoked") == 1
        try:
            rest = await asyncio.wait_for(response.content.read(), 5)
        except aiohttp.ClientPayloadError:
            rest = b""
        assert b"id: 2" not in rest
    assert len(in_flight) == 0
    bodies = await gw.audit_settled(1)
    aborted = [b for b in bodies if b.get("error", {}).get("code") == "aborted"]
    assert len(aborted) == 1
    assert aborted[0]["error"]["message"] == "grant revoked"
    assert aborted[0]["event"]["id"] == rid


async def test_abort_before_the_answer_is_a_clear_denial(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    in_flight = gw.in_flight

    async def revoke_soon() -> int:
        for _ in range(500):
            if in_flight.of_grant("g-1"):
                break
            await asyncio.sleep(0.01)
        count: int = in_flight.abort_grant("g-1", "grant revoked")
        return count

    revoker = asyncio.ensure_future(revoke_soon())
    status, body = await _get(gw, "/slow")
    assert await revoker == 1
    assert status == 403
    assert body["error"] == "grant_ended"


async def test_bodies_are_captured_up_to_the_cap(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(capture="{bodies: true, max_bytes: 16}")
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            gw.url + "/echo",
            data=b'{"name": "a very long value here"}',
            headers={"Host": HOST, "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 200
        rid = response.headers["X-Gateway-Request-Id"]
    outcome = _outcomes(await gw.audit_settled(1), rid)[0]
    request_body = outcome["http"]["request"]["body"]
    assert request_body["content"] == '{"name": "a very'
    assert request_body["truncated"] is True
    assert request_body["bytes"] == 34
    assert request_body["mime_type"] == "application/json"
    assert outcome["http"]["response"]["body"]["truncated"] is True
    assert len(outcome["http"]["response"]["body"]["content"]) == 16


async def test_a_pipeline_without_an_outcome_stage_is_counted(
    gateway_factory: GatewayFactory,
) -> None:
    def without_audit_out(app: web.Application) -> None:
        app[STAGES][:] = [s for s in app[STAGES] if s.name != "audit_out"]

    gw = await gateway_factory(customise=without_audit_out)
    before = _lost()
    status, _ = await _get(gw, "/admin")
    assert status == 403
    assert _lost() == before + 1


async def test_outcome_writes_land_before_the_app_stops(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    for index in range(5):
        status, _ = await _get(gw, f"/echo/{index}")
        assert status == 200
    await gw.server.close()
    bodies = await gw.audit_bodies()
    assert len([b for b in bodies if b["record"] == "http.outcome"]) == 5
    assert bodies[-1]["record"] in ("checkpoint", "gateway")


async def test_long_header_values_do_not_cost_the_outcome(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    before = _lost()
    status, _ = await _get(gw, "/echo", **{"X-Long": "v" * 12000})
    assert status == 200
    bodies = await gw.audit_settled(1)
    outcome = next(b for b in bodies if b["record"] == "http.outcome")
    sent = dict((n.lower(), v) for n, v in outcome["http"]["request"]["headers"])
    assert sent["x-long"] == "v" * 8192
    assert _lost() == before


async def test_gateway_endpoint_codes_stay_out_of_the_audit(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            gw.url + "/.gateway/auth?code=one-time-secret",
            headers={"Host": HOST},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status < 500
    bodies = await gw.audit_settled(1)
    assert gw.upstream.received == []
    assert "one-time-secret" not in repr(bodies)
    assert any(b.get("url", {}).get("path") == "/.gateway/auth" for b in bodies)


async def test_undecodable_bytes_do_not_cost_the_audit(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    answer = await gw.raw(
        f"GET /echo?q=caf%E9 HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: agent\xff\r\n"
        "Connection: close\r\n\r\n".encode("latin-1")
    )
    assert answer.startswith(b"HTTP/1.1 200")
    bodies = await gw.audit_settled(1)
    outcome = next(b for b in bodies if b["record"] == "http.outcome")
    assert outcome["user_agent"]["original"] == "agent\ufffd"
    assert outcome["url"]["query"] == "q=caf%E9"
