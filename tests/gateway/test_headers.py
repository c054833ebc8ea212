"""The header rules as pure functions: spoofing, hop-by-hop, cookies, forwarding, rewriting."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cookies import APP_SESSION, CONSOLE_SESSION
from gateway.proxy.headers import (
    HOP_BY_HOP,
    REMEMBERED_CONNECTION_CHARS,
    REMEMBERED_CONNECTIONS,
    REMEMBERED_NAME_CHARS,
    REMEMBERED_NAMES,
    _remembered_connection,
    _remembered_name,
    client_address,
    downstream_response_headers,
    forwarded_headers,
    hop_by_hop,
    is_spoofable,
    name_facts,
    rewrite_location,
    rewrite_set_cookie,
    strip_gateway_cookies,
    upstream_request_headers,
)
from gateway.stages.route import split_host
from policies.model import HeaderEdits

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
NONE = HeaderEdits()


@pytest.mark.parametrize(
    "name",
    [
        "X-Gateway-User",
        "x-gateway-user",
        "X_GATEWAY_USER",
        "x_gateway-actor",
        "X-Gateway-Assertion",
        "X-Gateway-Anything-New",
        " X-Gateway-User",
        "Forwarded",
        "FORWARDED",
        "X-Forwarded-For",
        "x_forwarded_for",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Real-IP",
        "X_Real_Ip",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "x_http_method_override",
        "X-HTTP-Method",
        "X-Method-Override",
        # the same overrides under other proxies' names (nginx, Envoy, IIS, CDNs, auth proxies)
        "X-Original-URI",
        "X-Original-Method",
        "X-Original-Host",
        "X-Host",
        "X-Envoy-Original-Path",
        "X-Remote-User",
        "Remote-User",
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X-Originating-IP",
        "X-Cluster-Client-IP",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
    ],
)
def test_spoofable_names(name: str) -> None:
    assert is_spoofable(name)
    out = upstream_request_headers([(name, "evil"), ("X-Kept", "1")], NONE)
    assert out == [("X-Kept", "1")]


@pytest.mark.parametrize(
    "name", ["X-Gateway", "X-Gatewayuser", "Gateway-User", "Accept", "X-Forwarded", "Authorization"]
)
def test_ordinary_names_pass(name: str) -> None:
    assert not is_spoofable(name)


def test_hop_by_hop_includes_every_name_listed_in_connection() -> None:
    headers = [
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("connection", "Upgrade,  , x_other"),
        ("X-Secret-Hop", "1"),
    ]
    names = hop_by_hop(headers)
    assert names >= HOP_BY_HOP
    assert {"x-secret-hop", "upgrade", "x-other"} <= names
    assert "" not in names


def test_hop_by_hop_is_computed_from_the_client_not_from_what_is_added() -> None:
    # A client listing an identity header in Connection cannot make the gateway drop the
    # identity it adds later: the list only removes client headers.
    out = upstream_request_headers(
        [("Connection", "X-Gateway-User, Authorization"), ("Authorization", "Bearer t")], NONE
    )
    assert out == []


def test_request_headers_keep_order_duplicates_and_drop_host_and_expect() -> None:
    out = upstream_request_headers(
        [
            ("Host", "acme.test"),
            ("Accept", "a"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
            ("Expect", "100-continue"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
        ],
        NONE,
    )
    assert out == [("Accept", "a"), ("X-Multi", "1"), ("X-Multi", "2"), ("Content-Length", "5")]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([f"{APP_SESSION}=s1; a=1"], "a=1"),
        ([f"a=1; {CONSOLE_SESSION}=s2", "b=2"], "a=1; b=2"),
        ([f"{APP_SESSION.upper()}=s1"], None),
        ([f"  {APP_SESSION} =s1;;  c=3 "], "c=3"),
        ([f"{APP_SESSION}=s1; {CONSOLE_SESSION}=s2"], None),
        (["noequals; d=4"], "noequals; d=4"),
        ([""], None),
    ],
)
def test_gateway_cookies_are_cut(values: list[str], expected: str | None) -> None:
    assert strip_gateway_cookies(values) == expected


def test_route_edits_apply_after_spoofing_rules() -> None:
    edits = HeaderEdits(set=(("X-Tenant", "acme"),), remove=frozenset({"x-debug"}))
    out = upstream_request_headers(
        [("X-Tenant", "evil"), ("x-tenant", "evil2"), ("X-Debug", "1"), ("A", "b")], edits
    )
    assert out == [("A", "b"), ("X-Tenant", "acme")]


def test_route_edits_also_catch_a_name_spelt_with_underscores() -> None:
    # Many upstream stacks (CGI, WSGI, PHP) read `X_Tenant` as `X-Tenant`: a client must not
    # slip a second tenant, or a removed header, past the route's edits that way.
    edits = HeaderEdits(set=(("X-Tenant", "acme"),), remove=frozenset({"x-debug"}))
    out = upstream_request_headers(
        [("X_Tenant", "evil"), (" x-tenant", "evil2"), ("X_DEBUG", "1"), ("A_B", "c")], edits
    )
    assert out == [("A_B", "c"), ("X-Tenant", "acme")]


def test_forwarded_headers_from_an_untrusted_peer_ignore_client_values() -> None:
    out = forwarded_headers(
        peer="203.0.113.9",
        scheme="https",
        host="acme.test",
        headers=[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil"),
        ],
        trusted=TRUSTED,
    )
    assert out == [
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "acme.test"),
    ]


def test_forwarded_headers_from_a_trusted_proxy_extend_its_chain() -> None:
    out = forwarded_headers(
        peer="10.1.1.1",
        scheme="http",
        host="acme.test",
        headers=[
            ("X-Forwarded-For", "198.51.100.7, 10.2.2.2"),
            ("X-Forwarded-Proto", "HTTPS"),
            ("X-Forwarded-Host", "acme.example:8443"),
        ],
        trusted=TRUSTED,
    )
    assert out == [
        ("X-Forwarded-For", "198.51.100.7, 10.2.2.2, 10.1.1.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "acme.example:8443"),
    ]


def test_trusted_proxy_with_malformed_values_falls_back_to_the_peer() -> None:
    out = forwarded_headers(
        peer="10.1.1.1",
        scheme="https",
        host="acme.test",
        headers=[
            ("X-Forwarded-For", "not-an-ip, 1.2.3.4"),
            ("X-Forwarded-Proto", "gopher"),
            ("X-Forwarded-Host", "evil host/<x>"),
        ],
        trusted=TRUSTED,
    )
    assert out == [
        ("X-Forwarded-For", "10.1.1.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "acme.test"),
    ]


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # untrusted peer: its word is ignored
        ("10.1.1.1", "198.51.100.7", "198.51.100.7"),
        ("10.1.1.1", "6.6.6.6, 198.51.100.7, 10.2.2.2", "198.51.100.7"),  # rightmost untrusted
        ("10.1.1.1", "garbage, 10.2.2.2", "10.2.2.2"),
        ("10.1.1.1", "", "10.1.1.1"),
    ],
)
def test_client_address(peer: str, xff: str, client: str) -> None:
    assert client_address(peer, [("X-Forwarded-For", xff)], TRUSTED) == client


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=1; Domain=internal.example; Path=/", "a=1; Path=/"),
        ("a=1; domain=.acme.test; Secure", "a=1; Secure"),
        ("a=1", "a=1"),
        (f"{APP_SESSION}=x; Path=/", None),
        (f"{CONSOLE_SESSION.lower()}=x", None),
        (f" {APP_SESSION} =x", None),
    ],
)
def test_set_cookie_rewrite(value: str, expected: str | None) -> None:
    assert rewrite_set_cookie(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        f"={APP_SESSION}=planted; Path=/; Secure",
        f" = {CONSOLE_SESSION}=planted",
        f"={APP_SESSION}",
        f"{APP_SESSION}",
    ],
)
def test_a_nameless_set_cookie_cannot_plant_a_gateway_cookie(value: str) -> None:
    # A browser keeps `=NAME=value` as a cookie without a name and sends it back as
    # `NAME=value`: to the gateway, that is its own cookie.
    assert rewrite_set_cookie(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://10.0.0.5:8080/x?y=1#f", "https://acme.test/x?y=1#f"),
        ("http://10.0.0.5:8080", "https://acme.test"),
        ("/relative", "/relative"),
        ("https://10.0.0.5:8080/x", "https://10.0.0.5:8080/x"),  # other scheme: other origin
        ("http://10.0.0.5:9090/x", "http://10.0.0.5:9090/x"),
        ("https://elsewhere.example/x", "https://elsewhere.example/x"),
        ("http://[::1:/broken", "http://[::1:/broken"),
    ],
)
def test_location_rewrite(value: str, expected: str) -> None:
    assert (
        rewrite_location(
            value, upstream_origin="http://10.0.0.5:8080", public_origin="https://acme.test"
        )
        == expected
    )


def test_response_headers() -> None:
    out = downstream_response_headers(
        [
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Location", "http://up:80/next"),
            ("Set-Cookie", f"{APP_SESSION}=planted"),
            ("Set-Cookie", "a=1; Domain=up"),
            ("X-Powered-By", "php"),
            ("Content-Length", "10"),
        ],
        HeaderEdits(set=(("X-Frame-Options", "DENY"),), remove=frozenset({"x-powered-by"})),
        upstream_origin="http://up:80",
        public_origin="https://acme.test:8443",
    )
    assert out == [
        ("Location", "https://acme.test:8443/next"),
        ("Set-Cookie", "a=1"),
        ("Content-Length", "10"),
        ("X-Frame-Options", "DENY"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("acme.test", ("acme.test", "")),
        ("ACME.Test.:8443", ("acme.test", "8443")),
        ("[::1]:80", ("[::1]", "80")),
        ("[::1]", ("[::1]", "")),
        ("10.0.0.1:1", ("10.0.0.1", "1")),
        ("", None),
        ("a b", None),
        ("acme.test:0", None),
        ("acme.test:99999", None),
        ("acme.test:x", None),
        ("acme.test:", ("acme.test", "")),
        ("[::1", None),
        ("[::1]x", None),
        ("[]", None),
        ("[<script>]", None),
        ("a" * 300, None),
        ("acme_test", None),
        ("acme.test/x", None),
    ],
)
def test_host_header_parsing(value: str, expected: tuple[str, str] | None) -> None:
    assert split_host(value) == expected


_NAMES = st.sampled_from(
    [
        "X-Gateway-User",
        "x_gateway_grant",
        "X-Forwarded-For",
        "Forwarded",
        "X-HTTP-Method-Override",
        "Connection",
        "Keep-Alive",
        "Upgrade",
        "Cookie",
        "Accept",
        "X-Custom",
        "x-custom",
        "Authorization",
    ]
) | st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
_VALUES = st.sampled_from(
    [f"{APP_SESSION}=s", f"a=1; {CONSOLE_SESSION}=s", "x-custom, accept", "v"]
) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_no_header_mix_gets_spoofed_or_hop_headers_through(
    headers: list[tuple[str, str]],
) -> None:
    out = upstream_request_headers(headers, NONE)
    dropped = hop_by_hop(headers)
    for name, value in out:
        assert not is_spoofable(name)
        assert name.lower().replace("_", "-") not in dropped
        if name.lower() == "cookie":
            assert strip_gateway_cookies([value]) == value
    assert len([n for n, _ in out if n.lower() == "cookie"]) <= 1


# --- remembered header names --------------------------------------------------------------
def test_remembered_name_facts_are_bounded_and_long_names_judged_afresh() -> None:
    _remembered_name.cache_clear()
    for index in range(REMEMBERED_NAMES + 300):
        assert name_facts(f"X-Custom-{index}") == (f"x-custom-{index}", False)
    assert _remembered_name.cache_info().currsize == REMEMBERED_NAMES
    long_spoof = "X-Gateway-" + "a" * REMEMBERED_NAME_CHARS
    assert name_facts(long_spoof) == (long_spoof.lower(), True)
    before = _remembered_name.cache_info()
    name_facts(long_spoof)  # never stored: judged afresh, the cache untouched
    assert _remembered_name.cache_info() == before


def test_remembered_names_keep_every_spelling_apart() -> None:
    # Each spelling is its own key; each is judged by its canonical form.
    for name in ("X-Gateway-User", "x_gateway_user", " X-GATEWAY-USER", "X-Forwarded-For"):
        for _ in range(2):
            assert is_spoofable(name)
    for name in ("X-Gateway", "Gateway-User", "X-Forwardedx"):
        for _ in range(2):
            assert not is_spoofable(name)
    out = upstream_request_headers(
        [("x_gateway_user", "evil"), ("X-Kept", "1"), ("x_gateway_user", "evil")], NONE
    )
    assert out == [("X-Kept", "1")]


def test_remembered_connection_lists_are_keyed_by_every_value_and_bounded() -> None:
    _remembered_connection.cache_clear()
    one = [("Connection", "keep-alive, X-Secret")]
    assert "x-secret" in hop_by_hop(one)
    assert "x-secret" in hop_by_hop(one)  # remembered: the same answer
    assert "x-other" not in hop_by_hop(one)
    # Two Connection fields: both lists count, whichever was seen before.
    two = [("Connection", "keep-alive, X-Secret"), ("connection", "X-Other")]
    assert {"x-secret", "x-other"} <= hop_by_hop(two)
    out = upstream_request_headers([*two, ("X-Other", "1"), ("X-Secret", "2"), ("A", "3")], NONE)
    assert out == [("A", "3")]
    for index in range(REMEMBERED_CONNECTIONS + 50):
        assert f"x-h{index}" in hop_by_hop([("Connection", f"X-H{index}")])
    assert _remembered_connection.cache_info().currsize == REMEMBERED_CONNECTIONS
    long_list = ", ".join(f"X-Long-{i}" for i in range(REMEMBERED_CONNECTION_CHARS))
    before = _remembered_connection.cache_info()
    assert "x-long-7" in hop_by_hop([("Connection", long_list)])
    assert _remembered_connection.cache_info() == before  # judged afresh, not kept
