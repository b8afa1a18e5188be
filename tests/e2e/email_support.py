"""Email end-to-end helpers: mail as a receiving server would file it, and a gateway reading it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from gateway.bootstrap import demo_policy
from gateway.settings import EmailSettings
from tests.fakes.mailservers import Dovecot, Relay

GOODBOT = "goodbot@example.com"
MX = "mx.example.com"
"""The receiving server the gateway trusts (its authserv-id)."""
PASS = "dmarc=pass (p=reject) header.from=example.com"


def mail(
    text: str,
    *,
    sender: str = "ana@example.com",
    subject: str = "question",
    auth: str | None = PASS,
    authserv: str = MX,
    headers: Iterable[tuple[str, str]] = (),
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    content_type: str = "text/plain; charset=utf-8",
) -> tuple[bytes, str]:
    """A raw message as ``authserv`` would deliver it (its Authentication-Results on top), and
    its Message-ID."""
    mid = message_id or f"<{uuid.uuid4().hex}@example.com>"
    lines = []
    if auth is not None:
        lines.append(f"Authentication-Results: {authserv}; {auth}")
    lines.append(f"Received: from mail.example.com by {authserv}; Mon, 1 Dec 2026 10:00:00 +0000")
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [
        f"From: Someone <{sender}>",
        f"To: goodbot <{GOODBOT}>",
        f"Subject: {subject}",
        "Date: Mon, 1 Dec 2026 10:00:00 +0000",
        f"Message-ID: {mid}",
    ]
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append(f"References: {references}")
    lines += ["MIME-Version: 1.0", f"Content-Type: {content_type}"]
    raw = "\r\n".join(lines) + "\r\n\r\n" + text.replace("\n", "\r\n") + "\r\n"
    return raw.encode(), mid


def email_policy(data_dir: Path, **channel: Any) -> None:
    """The demo policy with email open (``channel`` its settings) and addresses for ana, sam
    and the whole ops.example.com domain (as vera)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = demo_policy(data_dir)
    document = yaml.safe_load(path.read_text())
    document["channels"]["email"] = dict(channel)
    for name, address in (
        ("ana", "ana@example.com"),
        ("sam", "sam@example.com"),
        ("vera", "@ops.example.com"),
    ):
        document["principals"][name]["identities"].append({"channel": "email", "id": address})
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def email_settings(box: Dovecot, relay: Relay, **overrides: Any) -> EmailSettings:
    """Settings pointing the channel at the test mailbox and relay, without TLS (loopback)."""
    values: dict[str, Any] = {
        "address": GOODBOT,
        "trusted_authserv_ids": [MX],
        "imap_host": "127.0.0.1",
        "imap_port": box.port,
        "imap_tls": "none",
        "imap_username": box.user,
        "imap_password": box.password,
        "smtp_host": "127.0.0.1",
        "smtp_port": relay.port,
        "smtp_tls": "none",
        "poll_seconds": 0.2,
        "timeout_seconds": 10,
    }
    values.update(overrides)
    return EmailSettings.model_validate(values)


async def until(predicate: Callable[[], Any], seconds: float = 15.0, what: str = "") -> Any:
    """Wait until ``predicate()`` is truthy and return it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or 'the condition'}")
