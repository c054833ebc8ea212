"""Subresource loads from another org's routed host (`<img src>`, `<script src>`: no
`Origin`) are refused by their Sec-Fetch headers unless the `Referer` is one of this org's
pages; navigations and clients without Sec-Fetch headers pass."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.gateway.proxyharness import HOST, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]


async def _get(gw: Gateway, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url + "/echo", headers={"Host": HOST, **headers}) as response,
    ):
        return response.status, json.loads(await response.read())


def _subresource(site: str, referer: str | None = None) -> dict[str, str]:
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    if referer is not None:
        headers["Referer"] = referer
    return headers


async def test_another_orgs_image_load_is_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    refused = [
        _subresource("same-site", "https://beta.test/profile"),
        _subresource("same-site", "https://beta.test:8443/"),
        _subresource("cross-site", "https://evil.example/"),
        _subresource("same-site"),  # no Referer (Referrer-Policy: no-referrer)
        _subresource("same-site", "not a url"),
        _subresource("same-site", "https://user@acme.test/"),  # userinfo: never a page's
        _subresource("same-site", "javascript:alert(1)//acme.test/"),
        _subresource("same-site", "https://" + "a" * 300 + ".test/"),
        {**_subresource("same-site", "https://beta.test/"), "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Site": "same-site", "Referer": "https://beta.test/"},  # no mode
        {"Sec-Fetch-Site": "made-up", "Sec-Fetch-Mode": "no-cors"},  # unknown: from elsewhere
    ]
    for headers in refused:
        status, body = await _get(gw, headers)
        assert (status, body["error"]) == (403, "cross_origin"), headers
    assert gw.upstream.received == []


async def test_repeated_sec_fetch_headers_are_judged_by_their_worst(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    raw = (
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nSec-Fetch-Site: same-origin\r\n"
        "Sec-Fetch-Site: same-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Mode: no-cors\r\n"
        "Referer: https://beta.test/\r\nConnection: close\r\n\r\n"
    )
    answer = await gw.raw(raw.encode())
    assert int(answer.split(b" ", 2)[1]) == 403
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "cross_origin"
    twice = (
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nSec-Fetch-Site: same-site\r\n"
        "Sec-Fetch-Mode: no-cors\r\nReferer: https://acme.test/\r\n"
        "Referer: https://beta.test/\r\nConnection: close\r\n\r\n"
    )
    answer = await gw.raw(twice.encode())
    assert int(answer.split(b" ", 2)[1]) == 403
    assert gw.upstream.received == []


async def test_this_orgs_pages_navigations_and_plain_clients_pass(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    allowed = [
        {},  # no Sec-Fetch headers: curl, an API client, an old browser
        _subresource("same-origin"),
        _subresource("none"),
        _subresource("same-site", f"https://{HOST}/page"),
        _subresource("same-site", "https://api.acme.test:8443/app"),  # same org's host
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},  # a link followed
        {
            "Sec-Fetch-Site": "same-site",
            "Sec-Fetch-Mode": "navigate",
            "Referer": "https://beta.test/",
        },
        # A cors fetch names its page in Origin; one of this org's passes without Referer.
        {
            "Sec-Fetch-Site": "same-site",
            "Sec-Fetch-Mode": "cors",
            "Origin": "https://api.acme.test",
        },
    ]
    for headers in allowed:
        status, body = await _get(gw, headers)
        assert status == 200, (headers, body)
    assert len(gw.upstream.received) == len(allowed)


async def test_concurrent_foreign_and_own_loads_are_each_judged(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    own = _subresource("same-site", f"https://{HOST}/")
    foreign = _subresource("same-site", "https://beta.test/")
    answers = await asyncio.gather(*(_get(gw, own if i % 2 else foreign) for i in range(20)))
    assert [status for status, _ in answers] == [200 if i % 2 else 403 for i in range(20)]
    assert len(gw.upstream.received) == 10
