"""`method_override: body`: a POST's form `_method` fields are judged as methods, the body
read ahead is forwarded byte for byte, and without the setting no body is read at all.

The route (see `proxyharness.policy_yaml`) allows POST and PATCH on /records but denies
DELETE and PUT there.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.gateway.proxyharness import HOST, Gateway, GatewayFactory, gateway_factory

__all__ = ["gateway_factory"]

FORM = "application/x-www-form-urlencoded"
BOUNDARY = "----form-boundary-7MA4YWxk"


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(answer.rpartition(b"\r\n\r\n")[2])
    return decoded


def _post(body: bytes, content_type: str | None = FORM, target: str = "/records/7") -> bytes:
    """A raw POST with a Content-Length; `content_type` None sends no Content-Type."""
    typed = f"Content-Type: {content_type}\r\n" if content_type is not None else ""
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {HOST}\r\n{typed}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _chunked(chunks: list[bytes], content_type: str = FORM, target: str = "/records/7") -> bytes:
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return head + framed + b"0\r\n\r\n"


def multipart(*fields: tuple[str, str], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body; each field is (Content-Disposition params, value)."""
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; {params}\r\n\r\n{value}\r\n"
        for params, value in fields
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


async def _denial_reasons(gw: Gateway, count: int) -> list[str]:
    bodies = await gw.audit_settled(count)
    return [json.dumps(b) for b in bodies if b.get("record") == "http.denial"]


async def test_urlencoded_and_multipart_method_delete_are_denied(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(method_override="body")
    answer = await gw.raw(_post(b"name=x&_method=DELETE"))
    assert _status(answer) == 403, answer[:300]
    assert _body(answer)["error"] == "policy_denied"
    assert "_method=DELETE in the form body" in _body(answer)["reason"]
    body = multipart(('name="name"', "x"), ('name="_method"', "DELETE"))
    answer = await gw.raw(_post(body, MULTIPART))
    assert _status(answer) == 403, answer[:300]
    assert _body(answer)["error"] == "policy_denied"
    assert gw.upstream.received == []
    reasons = await _denial_reasons(gw, 2)
    assert len(reasons) == 2
    assert all("_method=DELETE in the form body" in r for r in reasons)


async def test_an_allowed_override_passes_and_the_upstream_gets_identical_bytes(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(method_override="body", capture="{bodies: true, max_bytes: 4096}")
    form = b"name=caf%C3%A9&note=a+b&_method=PATCH&blob=" + bytes(range(32, 127))
    answer = await gw.raw(_post(form))
    assert _status(answer) == 200, answer[:300]
    parts = multipart(('name="_method"', "patch"), ('name="file"; filename="a.txt"', "\x00\x01"))
    answer = await gw.raw(_post(parts, MULTIPART))
    assert _status(answer) == 200, answer[:300]
    first, second = gw.upstream.received
    assert (first.method, first.body) == ("POST", form)
    assert first.header("Content-Length") == [str(len(form))]
    assert first.header("Transfer-Encoding") == []
    assert (second.method, second.body) == ("POST", parts)
    assert second.header("Content-Length") == [str(len(parts))]
    assert second.header("Content-Type") == [MULTIPART]
    # The audit sees the same bytes as the upstream.
    bodies = await gw.audit_settled(2)
    outcomes = [b for b in bodies if b["record"] == "http.outcome"]
    assert len(outcomes) == 2
    captured = {o["http"]["request"]["body"]["content"] for o in outcomes}
    assert form.decode() in captured
    assert {o["http"]["request"]["bytes"] for o in outcomes} == {len(form), len(parts)}


async def test_several_method_fields_one_denied_is_denied(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")
    answer = await gw.raw(_post(b"_method=PATCH&x=1&_method=DELETE"))
    assert _status(answer) == 403
    body = multipart(('name="_method"', "PATCH"), ('name="_method"', "PUT"))
    answer = await gw.raw(_post(body, MULTIPART))
    assert _status(answer) == 403
    # More distinct overrides than any application asks for are refused unjudged.
    answer = await gw.raw(_post(b"&".join(b"_method=M%d" % i for i in range(5))))
    assert _status(answer) == 403
    assert "too many _method overrides" in _body(answer)["reason"]
    # A method in lower case (a POST to Symfony, which upper-cases it) is refused whole.
    answer = await gw.raw(_post(b"_method=DELETE").replace(b"POST ", b"post ", 1))
    assert _status(answer) == 400, answer[:300]
    # The query's and the body's overrides are all judged.
    answer = await gw.raw(_post(b"_method=DELETE", target="/records/7?_method=PATCH"))
    assert _status(answer) == 403
    assert gw.upstream.received == []


async def test_odd_spellings_of_the_field_and_the_method_are_judged(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(method_override="body")
    urlencoded = [
        b"_method=delete",
        b"_METHOD=Delete",
        b"%5Fmethod=DELETE",
        b"%5f%6D%65%74%68%6f%64=%44%45%4C%45%54%45",
        b"_method=+delete+",
        b"_method=%20DELETE%09",
        b"_method[]=DELETE",
        b"_method[x]=DELETE",
        b".method=DELETE",
        b"[method=DELETE",
        b"a=1;_method=DELETE",
        b"x=1&&_method=PUT&",
        b" _method =DELETE",
    ]
    for form in urlencoded:
        answer = await gw.raw(_post(form))
        assert _status(answer) == 403, (form, answer[:300])
    multiparts = [
        multipart(('name="_METHOD"', "delete")),
        multipart(("name=_method", " DELETE ")),
        multipart(('NAME="_method"', "DELETE")),
        multipart(("name*=UTF-8''%5Fmethod", "DELETE")),
        multipart(('name="x"; name="_method"', "DELETE")),
        multipart(('name="%5Fmethod"', "DELETE")),
        multipart(('name="_method"', "DELETE"), boundary="b"),
    ]
    for body in multiparts:
        boundary = BOUNDARY if BOUNDARY.encode() in body else "b"
        for content_type in (
            f"multipart/form-data; boundary={boundary}",
            f'MULTIPART/FORM-DATA; charset=utf-8; BOUNDARY="{boundary}"',
            f"multipart/mixed; boundary={boundary}",
        ):
            answer = await gw.raw(_post(body, content_type))
            assert _status(answer) == 403, (body, content_type, answer[:300])
    form_types: list[str | None] = [
        None,  # Rack reads a POST without a type as a form
        "",
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        "application/x-www-form-urlencoded, text/plain",
        "text/plain, application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded garbage;;",
    ]
    for form_type in form_types:
        answer = await gw.raw(_post(b"_method=DELETE", form_type))
        assert _status(answer) == 403, (form_type, answer[:300])
    assert gw.upstream.received == []
    # Names that are not `_method` and values that are allowed methods pass.
    for form in [b"x_method=DELETE", b"method=DELETE", b"q=_method", b"_method=PATCH", b""]:
        answer = await gw.raw(_post(form))
        assert _status(answer) == 200, (form, answer[:300])
    assert [r.body for r in gw.upstream.received][-1] == b""


async def test_bodies_that_are_not_forms_are_not_read(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")
    for content_type in ("application/json", "text/plain", "application/octet-stream"):
        answer = await gw.raw(_post(b"_method=DELETE", content_type))
        assert _status(answer) == 200, (content_type, answer[:300])
    assert [r.body for r in gw.upstream.received] == [b"_method=DELETE"] * 3


async def test_oversized_form_bodies_are_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")
    big = b"note=" + b"a" * (64 * 1024)
    answer = await gw.raw(_post(big))
    assert _status(answer) == 413, answer[:300]
    assert _body(answer)["error"] == "body_too_large"
    # Without a declared length, the bound holds as the body arrives.
    answer = await gw.raw(_chunked([big[:40000], big[40000:]]))
    assert _status(answer) == 413, answer[:300]
    assert gw.upstream.received == []
    # At the bound exactly, a form passes whole.
    exact = b"_method=PATCH&n=" + b"b" * (64 * 1024 - 16)
    assert len(exact) == 64 * 1024
    answer = await gw.raw(_post(exact))
    assert _status(answer) == 200, answer[:300]
    assert gw.upstream.received[0].body == exact
    reasons = await _denial_reasons(gw, 3)
    assert sum("at most 65536 bytes" in r for r in reasons) == 2


async def test_malformed_form_bodies_are_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")
    whole = multipart(('name="_method"', "PATCH"))
    hostile: list[tuple[bytes, str]] = [
        (whole[: -len(f"--{BOUNDARY}--\r\n")], MULTIPART),  # never closed
        (whole, "multipart/form-data"),  # no boundary
        (whole, "multipart/form-data; boundary="),
        (whole, f"multipart/form-data; boundary={BOUNDARY}; boundary=other"),
        (whole, "multipart/form-data; boundary=" + "x" * 71),
        (whole, "multipart/form-data; boundary=other"),  # not the body's
        (whole.replace(b"\r\n\r\n", b"\n\n", 1), MULTIPART),  # headers never end
        (whole.replace(b"Content-Disposition", b" Content-Disposition", 1), MULTIPART),
        (whole.replace(b"Content-Disposition:", b"Content-Disposition", 1), MULTIPART),
        (
            whole.replace(
                b"Content-Disposition", b"Content-Disposition: form-data\r\nContent-Disposition", 1
            ),
            MULTIPART,
        ),
        (f"--{BOUNDARY}garbage\r\n".encode() + whole, MULTIPART),
        (whole, "multipart garbage form"),
        # PHP reads on past the close delimiter to the next boundary line
        (whole + multipart(('name="_method"', "DELETE")), MULTIPART),
        (
            whole.replace(
                b"\r\n\r\nPATCH", b"\r\nContent-Transfer-Encoding: base64\r\n\r\nREVMRVRF", 1
            ),
            MULTIPART,
        ),
    ]
    for body, content_type in hostile:
        answer = await gw.raw(_post(body, content_type))
        assert _status(answer) == 400, (body, content_type, answer[:300])
        assert _body(answer)["error"] == "bad_form_body"
    # A compressed form: an application inflating it would see fields the gateway could not.
    gzipped = _post(gzip.compress(b"_method=DELETE")).replace(
        b"Content-Type:", b"Content-Encoding: gzip\r\nContent-Type:", 1
    )
    answer = await gw.raw(gzipped)
    assert _status(answer) == 400
    assert "Content-Encoding" in _body(answer)["reason"]
    # Two Content-Type headers: which one the application reads cannot be known (the
    # gateway refuses such a request before any stage; the policy stage would as well).
    two_types = _post(b"_method=PATCH").replace(
        b"Content-Type:", b"Content-Type: text/plain\r\nContent-Type:", 1
    )
    answer = await gw.raw(two_types)
    assert _status(answer) == 400
    assert gw.upstream.received == []


async def test_a_body_ending_early_or_too_slow_is_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")  # read_s is 1.5 s on this route
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(_post(b"_method=PATCH&x=1")[:-4])  # four bytes never come
        await writer.drain()
        async with asyncio.timeout(20):
            # Read the answer, not until the close: the server lingers for the unsent bytes.
            answer = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert _status(answer) == 408, answer[:300]
    assert b"Connection: close" in answer
    # A client that leaves halfway: nothing reaches the upstream, the attempt is audited.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(_post(b"_method=PATCH&x=1")[:-4])
    await writer.drain()
    writer.close()
    reasons = await _denial_reasons(gw, 2)
    assert len(reasons) == 2
    assert '"request_timeout"' in reasons[0]
    assert '"client_closed"' in reasons[1]
    assert gw.upstream.received == []


async def test_chunked_form_bodies_are_judged_and_forwarded_chunked(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(method_override="body")
    answer = await gw.raw(_chunked([b"x=1&_met", b"hod=DEL", b"ETE"]))
    assert _status(answer) == 403, answer[:300]
    assert gw.upstream.received == []
    answer = await gw.raw(_chunked([b"x=1&_met", b"hod=PATCH", b"&y=2"]))
    assert _status(answer) == 200, answer[:300]
    (got,) = gw.upstream.received
    assert got.body == b"x=1&_method=PATCH&y=2"
    assert got.header("Transfer-Encoding") == ["chunked"]
    assert got.header("Content-Length") == []


async def test_expect_continue_is_answered_once(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")
    body = b"_method=PATCH&x=1"
    head = _post(body).removesuffix(body).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(20):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            await writer.drain()
            answer = await reader.read()
    finally:
        writer.close()
    assert _status(answer) == 200, answer[:300]
    assert b"100 Continue" not in answer
    assert gw.upstream.received[0].body == body


async def test_a_post_refused_by_its_query_is_not_asked_for_its_body(
    gateway_factory: GatewayFactory,
) -> None:
    # The query's `_method` is judged first: a refused request costs the client no upload.
    gw = await gateway_factory(method_override="body")
    body = b"_method=PATCH&x=1"
    head = _post(body, target="/records/7?_method=DELETE").removesuffix(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        await writer.drain()
        async with asyncio.timeout(20):
            answer = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert _status(answer) == 403, answer[:300]
    assert gw.upstream.received == []


async def test_concurrent_forms_are_each_judged_on_their_own(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(method_override="body")
    forms = [
        (b"_method=DELETE&i=%d" % i if i % 2 else b"_method=PATCH&i=%d" % i) for i in range(20)
    ]
    answers = await asyncio.gather(*(gw.raw(_post(form), wait_s=30) for form in forms))
    for form, answer in zip(forms, answers, strict=True):
        assert _status(answer) == (403 if b"DELETE" in form else 200), (form, answer[:300])
    assert sorted(r.body for r in gw.upstream.received) == sorted(forms[0::2])


async def test_without_the_setting_the_body_is_never_read(gateway_factory: GatewayFactory) -> None:
    # The default: a form's `_method` is the application's business (deny by path), and
    # the body streams to the upstream as it arrives.
    gw = await gateway_factory()
    answer = await gw.raw(_post(b"_method=DELETE"))
    assert _status(answer) == 200, answer[:300]
    assert gw.upstream.received[0].body == b"_method=DELETE"
    await _streams_before_the_body_ends(gw, FORM)


async def test_with_the_setting_other_bodies_still_stream(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(method_override="body")
    await _streams_before_the_body_ends(gw, "application/octet-stream")


async def _streams_before_the_body_ends(gw: Gateway, content_type: str) -> None:
    """The upstream sees the first chunk while the client still holds back the second."""
    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"_method=DELETE&first=1"
        await release.wait()
        yield b"&second=2"

    async with aiohttp.ClientSession() as session:
        sending = asyncio.create_task(
            session.post(
                f"{gw.url}/upload",
                data=body(),
                headers={"Host": HOST, "Content-Type": content_type},
            )
        )
        try:
            async with asyncio.timeout(20):
                await gw.upstream.first_chunk_in.wait()
            release.set()
            async with asyncio.timeout(20):
                response = await sending
            assert response.status == 200
            answer = await response.json()
            response.release()
        finally:
            release.set()
            sending.cancel()
    assert answer["size"] == len(b"_method=DELETE&first=1&second=2")
