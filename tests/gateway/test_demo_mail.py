"""The demo's mail catcher: it prints and keeps what the gateway sends, on loopback only."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from email.message import EmailMessage

import aiosmtplib
import pytest

from gateway.demo.mail_catcher import MAX_MESSAGE_BYTES, MailCatcher


@pytest.fixture
async def catcher() -> AsyncIterator[tuple[MailCatcher, io.StringIO]]:
    out = io.StringIO()
    catcher = MailCatcher(out=out)
    await catcher.start("127.0.0.1", 0)
    yield catcher, out
    await catcher.stop()


def _message(subject: str, body: str, to: str = "alice@acme.example") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "gateway@gateway.localhost"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


async def test_a_message_is_printed_and_kept(catcher: tuple[MailCatcher, io.StringIO]) -> None:
    mail, out = catcher
    body = "Sam asks to act as bob.\nReview: https://gateway.localhost:8443/requests/r-1\n"
    await aiosmtplib.send(
        _message("Access request r-1", body), hostname="127.0.0.1", port=mail.port
    )
    (caught,) = await mail.wait_for(1)
    assert caught.recipients == ("alice@acme.example",)
    assert caught.sender == "gateway@gateway.localhost"
    assert caught.subject == "Access request r-1"
    assert "https://gateway.localhost:8443/requests/r-1" in caught.text
    printed = out.getvalue()
    assert "mail to alice@acme.example" in printed
    assert "subject: Access request r-1" in printed
    assert "Review: https://gateway.localhost:8443/requests/r-1" in printed


async def test_html_only_and_odd_messages_are_still_caught(
    catcher: tuple[MailCatcher, io.StringIO],
) -> None:
    mail, _ = catcher
    html = EmailMessage()
    html["Subject"] = "html"
    html.set_content("<p>hello</p>", subtype="html")
    await aiosmtplib.send(
        html, sender="a@b.example", recipients=["c@d.example"], hostname="127.0.0.1", port=mail.port
    )
    raw = (
        b"Subject: =?bogus?Q?x?=\r\n"
        b"Content-Type: text/plain; charset=nonsense-8\r\n\r\n\xff\xfe\r\n"
    )
    await aiosmtplib.send(
        raw, sender="a@b.example", recipients=["c@d.example"], hostname="127.0.0.1", port=mail.port
    )
    first, second = await mail.wait_for(2)
    assert "<p>hello</p>" in first.text
    assert second.recipients == ("c@d.example",)
    assert second.text  # something printable, never a crash


async def test_oversized_messages_are_refused(catcher: tuple[MailCatcher, io.StringIO]) -> None:
    mail, out = catcher
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await aiosmtplib.send(
            _message("big", "x" * (MAX_MESSAGE_BYTES + 1024)), hostname="127.0.0.1", port=mail.port
        )
    assert refused.value.code == 552
    assert mail.messages == []
    assert out.getvalue() == ""


async def test_concurrent_senders_are_all_caught(catcher: tuple[MailCatcher, io.StringIO]) -> None:
    mail, _ = catcher
    await asyncio.gather(
        *(
            aiosmtplib.send(
                _message(f"n{i}", f"body {i}", to=f"u{i}@acme.example"),
                hostname="127.0.0.1",
                port=mail.port,
            )
            for i in range(20)
        )
    )
    caught = await mail.wait_for(20)
    assert sorted(m.subject for m in caught) == sorted(f"n{i}" for i in range(20))


async def test_wait_for_gives_up(catcher: tuple[MailCatcher, io.StringIO]) -> None:
    mail, _ = catcher
    with pytest.raises(TimeoutError):
        await mail.wait_for(1, timeout_s=0.1)
