"""The form readers behind `method_override: body`: which fields are `_method`, and that
no input makes them fail other than by a clear FormUnparseable."""

from __future__ import annotations

import random

import pytest

from gateway.proxy.form_override import (
    MAX_OVERRIDE_CHARS,
    FormUnparseable,
    is_override_name,
    multipart_overrides,
    urlencoded_overrides,
)


@pytest.mark.parametrize(
    "name",
    ["_method", "_METHOD", " _Method ", "_method[]", "_method[0]", ".method", "[method"],
)
def test_names_a_framework_reads_as_method(name: str) -> None:
    assert is_override_name(name)


@pytest.mark.parametrize(
    "name", ["method", " method", "x_method", "_methods", "_method_", "__method", ""]
)
def test_names_that_are_not_method(name: str) -> None:
    assert not is_override_name(name)


def test_urlencoded_values_are_decoded_in_order_and_capped() -> None:
    body = b"a=1&_method=put&%5Fmethod=%44elete;_METHOD=+patch+&_method=&_method=" + b"X" * 99
    assert urlencoded_overrides(body) == ["PUT", "DELETE", "PATCH", "X" * MAX_OVERRIDE_CHARS]


def test_urlencoded_bytes_that_are_not_utf8_are_read_byte_for_byte() -> None:
    assert urlencoded_overrides(b"\xff\xfe=1&_method=DELETE&x=%FF") == ["DELETE"]


def test_many_fields_are_read_in_linear_time() -> None:
    body = b"&".join(b"_method=M%d" % i for i in range(7000))  # about 64 KiB
    assert len(urlencoded_overrides(body)) == 7000


def test_multipart_reads_every_part_and_refuses_what_it_cannot_read() -> None:
    body = (
        b"preamble\r\n--b\r\nContent-Disposition: form-data; name=_method\r\n\r\nput\r\n"
        b"--b \t\r\n\r\nno headers\r\n"
        b'--b\r\nContent-Type: text/plain\r\ncontent-disposition: form-data; name="a";'
        b' NAME="_Method"\r\n\r\n delete \r\n--b--\r\nepilogue --b\r\n'
    )
    assert multipart_overrides(body, "b") == ["PUT", "DELETE"]
    plain = (
        b"--b\r\nContent-Transfer-Encoding: 8bit\r\nContent-Disposition: form-data; name=_method"
    )
    assert multipart_overrides(plain + b"\r\n\r\nput\r\n--b--", "b") == ["PUT"]
    encoded = plain.replace(b"8bit", b"Base64") + b"\r\n\r\ncHV0\r\n--b--"
    with pytest.raises(FormUnparseable):
        multipart_overrides(encoded, "b")
    # RFC 2231 names, continued and encoded, are read whole.
    for params in [b"name*0=_me; name*1=thod", b"name*0*=UTF-8''%5Fme; name*1=THOD"]:
        continued = b"--b\r\nContent-Disposition: form-data; " + params
        assert multipart_overrides(continued + b"\r\n\r\nput\r\n--b--", "b") == ["PUT"]
    # Another field may be encoded: the gateway need not read it.
    other = encoded.replace(b"name=_method", b"name=file")
    assert multipart_overrides(other, "b") == []
    for broken in [b"", b"--b", b"--b\r\n", b"--b\r\n\r\nx", b"--bx\r\n\r\n\r\n--b--"]:
        with pytest.raises(FormUnparseable):
            multipart_overrides(broken, "b")


def test_random_bytes_never_fail_otherwise() -> None:
    chooser = random.Random(20261129)
    alphabet = b"-b\r\n:;=\"_method form-data Content-Disposition name*''%5F\x00\xff"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(3000):
        body = bytes(chooser.choice(alphabet) for _ in range(chooser.randrange(0, 200)))
        assert all(isinstance(m, str) for m in urlencoded_overrides(body))
        try:
            multipart_overrides(
                b"--b\r\nContent-Disposition: form-data; " + body + b"\r\n\r\nput\r\n--b--", "b"
            )
        except FormUnparseable:
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
    assert outcomes["read"] > 0
    assert outcomes["refused"] > 0


@pytest.mark.parametrize(
    "body",
    [
        # PHP ends a part at "\n--boundary" and splits part headers at a bare "\n".
        b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\n--b\n'
        b'Content-Disposition: form-data; name="_method"\n\nDELETE\r\n--b--\r\n',
        b"preamble\n--b\r\nContent-Disposition: form-data; name=_method\r\n\r\nput\r\n--b--",
        b"--b\r\nContent-Type: text/plain\nContent-Disposition: form-data; name=_method"
        b"\r\n\r\nDELETE\r\n--b--",
        b"--b\r\nContent-Disposition: form-data; name=a\rX: y\r\n\r\nDELETE\r\n--b--",
        # PHP looks past the close delimiter for the next "--boundary" line.
        b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--\r\n"
        b"--b\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--b--\r\n",
        # Rack finds `Content-Disposition:` anywhere in a part's head.
        b"--b\r\nX-Content-Disposition: form-data; name=_method\r\n"
        b"Content-Disposition: form-data; name=a\r\n\r\nDELETE\r\n--b--",
        b'--b\r\nContent-Disposition: form-data; name="a"; x="Content-Disposition: ;'
        b' name=_method"\r\n\r\nDELETE\r\n--b--',
        b"--b\r\nX-Content-ID: _method\r\n\r\nDELETE\r\n--b--",
    ],
)
def test_multipart_that_another_parser_could_split_differently_is_refused(body: bytes) -> None:
    with pytest.raises(FormUnparseable):
        multipart_overrides(body, "b")


def test_a_content_id_names_a_part_as_older_rack_does() -> None:
    body = b"--b\r\ncontent-id:  _method \r\n\r\ndelete\r\n--b--\r\n"
    assert multipart_overrides(body, "b") == ["DELETE"]
