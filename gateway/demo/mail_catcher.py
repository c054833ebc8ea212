"""The demo's mail catcher: an SMTP server on loopback that prints every message it gets.

The gateway's notifications (new request, decision, summary) go to it in `make demo`, so
the approver's email and its console link show up in the terminal. It keeps what it
caught for tests. It is for loopback only: no TLS, no auth, messages capped at 1 MiB.

    catcher = MailCatcher(out=sys.stdout)
    await catcher.start("127.0.0.1", 8025)
    ...
    await catcher.stop()
"""

from __future__ import annotations

import asyncio
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP, Envelope, Session

MAX_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class CaughtMessage:
    sender: str
    recipients: tuple[str, ...]
    subject: str
    text: str
    message: EmailMessage


def _text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        return "(undecodable body)"
    return content if isinstance(content, str) else "(binary body)"


class MailCatcher:
    def __init__(self, out: TextIO | None = None) -> None:
        self.messages: list[CaughtMessage] = []
        self.arrived = asyncio.Condition()
        self._out = out
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if not isinstance(raw, bytes):
            raw = str(raw).encode()
        # policy=default makes the parser build EmailMessage objects.
        parsed = BytesParser(_class=EmailMessage, policy=email.policy.default).parsebytes(raw)
        caught = CaughtMessage(
            sender=str(envelope.mail_from),
            recipients=tuple(str(r) for r in envelope.rcpt_tos),
            subject=str(parsed.get("Subject", "")),
            text=_text_of(parsed),
            message=parsed,
        )
        async with self.arrived:
            self.messages.append(caught)
            self.arrived.notify_all()
        if self._out is not None:
            self._print(caught)
        return "250 caught"

    def _print(self, caught: CaughtMessage) -> None:
        rule = "─" * 72
        print(
            f"\n{rule}\n✉  mail to {', '.join(caught.recipients)}\n"
            f"   from {caught.sender}\n   subject: {caught.subject}\n\n"
            f"{caught.text.rstrip()}\n{rule}",
            file=self._out,
            flush=True,
        )

    async def start(self, host: str = "127.0.0.1", port: int = 8025) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> Any:
            return SMTP(self, data_size_limit=MAX_MESSAGE_BYTES, hostname="mail.localhost")

        self._server = await loop.create_server(protocol, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[CaughtMessage]:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.messages) >= count)
            return list(self.messages)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
