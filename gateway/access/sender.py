"""Delivering the mail queue over SMTP with aiosmtplib.

Transport security comes from the config's `smtp.security`: `tls` (implicit TLS, port 465)
or `starttls` (STARTTLS is required: a server that does not offer it gets nothing); `plain`
only where the config says so, for a local catcher. Certificates are verified against the
system trust store unless a `tls_context` is given.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from gateway.access.mail import MailMessage, MailQueue
from gateway.config import Smtp

log = logging.getLogger(__name__)


class MailSender:
    def __init__(
        self,
        queue: MailQueue,
        smtp: Smtp,
        *,
        tls_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.queue = queue
        self.smtp = smtp
        self.tls_context = tls_context
        self.timeout_s = timeout_s

    def _email(self, message: MailMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.smtp.sender
        email["To"] = message.to
        email["Subject"] = message.subject
        email["Date"] = format_datetime(datetime.fromtimestamp(message.created_at, UTC))
        email["Message-ID"] = make_msgid(idstring=message.id)
        email.set_content(message.body)
        return email

    async def deliver(self, message: MailMessage) -> None:
        """Send one message; raises on any failure."""
        security = self.smtp.security
        context = self.tls_context or ssl.create_default_context()
        await aiosmtplib.send(
            self._email(message),
            hostname=self.smtp.host,
            port=self.smtp.port,
            username=self.smtp.username,
            password=self.smtp.password,
            # SECURITY: TLS or required STARTTLS; plain only when the config names it.
            use_tls=security == "tls",
            start_tls=security == "starttls",
            tls_context=context if security != "plain" else None,
            timeout=self.timeout_s,
        )

    async def send_due(self, limit: int = 20) -> tuple[int, int]:
        """Send what is due now; returns (sent, failed). Failures are retried with backoff."""
        sent = failed = 0
        for claimed in await self.queue.claim(limit):
            # A lease can run out while earlier messages of this batch were slow to send:
            # renewed now, or left to the instance that took the message over.
            message = await self.queue.renew(claimed)
            if message is None:
                log.info("mail %s was taken over by another sender; not sent here", claimed.id)
                continue
            try:
                await self.deliver(message)
            except Exception as exc:
                # Any failure of one message (SMTP, network, TLS, or a message that cannot
                # be built) counts against that message alone, with its reason recorded,
                # so it is retried, then given up on visibly, and never holds back the rest.
                failed += 1
                log.warning("mail %s to %r not delivered: %s", message.id, message.to, exc)
                await self.queue.failed(message, f"{type(exc).__name__}: {exc}")
                continue
            sent += 1
            await self.queue.delivered(message)
        return sent, failed

    async def run(self, interval_s: float = 5.0) -> None:
        """Deliver forever (an app background task); errors are logged, never fatal."""
        while True:
            try:
                await self.send_due()
            except Exception:
                log.exception("mail sender round failed; retrying in %.0f s", interval_s)
            await asyncio.sleep(interval_s)
