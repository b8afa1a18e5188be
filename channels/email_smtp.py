"""Email channel, translate-out: the threaded reply and its hand-over to the relay (channels).

A reply goes to the verified From address only (never Reply-To, which the sender controls
without any authentication), with ``In-Reply-To`` and ``References`` so it lands in the same
thread, ``Re:`` on the subject, and ``Auto-Submitted: auto-replied`` (RFC 3834) so that other
automatons do not answer it. aiosmtplib sends it over implicit TLS, STARTTLS, or (only to a
relay on loopback) plain SMTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

import aiosmtplib

from channels.email_imap import tls_context


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """Where the outbound relay is and how to reach it."""

    host: str
    port: int
    tls: Literal["tls", "starttls", "none"]
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    """A CA bundle to trust instead of the system's."""
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What a reply says and where it sits in its thread."""

    recipient: str
    subject: str
    body: str
    message_id: str
    """The reply's own Message-ID (fixed before the first attempt)."""
    in_reply_to: str | None = None
    references: Sequence[str] = ()


def compose(out: Outgoing, address: str, display_name: str) -> EmailMessage:
    """The reply as a text/plain UTF-8 message from goodbot's address."""
    message = EmailMessage()
    local, _, domain = address.partition("@")
    message["From"] = Address(display_name, local, domain)
    message["To"] = out.recipient
    message["Subject"] = out.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = out.message_id
    if out.in_reply_to:
        message["In-Reply-To"] = out.in_reply_to
    if out.references:
        message["References"] = " ".join(out.references)
    message["Auto-Submitted"] = "auto-replied"
    message.set_content(out.body)
    return message


async def send(message: EmailMessage, endpoint: SmtpEndpoint, envelope_from: str) -> None:
    """Hand the message to the relay; raises ``aiosmtplib.SMTPException`` or ``OSError``."""
    context = None if endpoint.tls == "none" else tls_context(endpoint.ca_file)
    await aiosmtplib.send(
        message,
        sender=envelope_from,
        hostname=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        use_tls=endpoint.tls == "tls",
        start_tls=endpoint.tls == "starttls",
        tls_context=context,
        timeout=endpoint.timeout,
    )
