"""Email channel, in: the mailbox over IMAP (aioimaplib): unseen mail, marked seen (channels).

Messages are read with ``BODY.PEEK[]`` so reading never marks them seen; the channel marks a
message ``\\Seen`` itself, only once it is stored (or deliberately ignored). Between rounds the
mailbox waits in IDLE when the server offers it (RFC 2177; re-issued well within the
29 minutes servers allow), otherwise it sleeps for the poll interval.

aioimaplib speaks implicit TLS (``IMAP4_SSL``, port 993, which RFC 8314 prefers) but not
STARTTLS, so the TLS choices are ``tls`` and, for a server on loopback only, ``none``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Final, Literal

import aioimaplib

log = logging.getLogger(__name__)

_SIZE: Final = re.compile(rb"RFC822\.SIZE (\d+)")
_UID: Final = re.compile(rb"UID (\d+)")


class MailboxError(Exception):
    """The IMAP server refused a command.

    Attributes:
        command: What was asked (``LOGIN``, ``SELECT INBOX``…); never a password.
        answer: The server's answer lines.
    """

    def __init__(self, command: str, answer: str) -> None:
        super().__init__(f"{command}: {answer}")
        self.command = command
        self.answer = answer


@dataclass(frozen=True, slots=True)
class ImapEndpoint:
    """Where the mailbox is and how to reach it."""

    host: str
    port: int
    tls: Literal["tls", "none"]
    username: str
    password: str
    mailbox: str = "INBOX"
    ca_file: str | None = None
    """A CA bundle to trust instead of the system's."""
    timeout: float = 30.0
    """Longest one command may take."""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context (the system's CAs, or ``ca_file``'s)."""
    return ssl.create_default_context(cafile=ca_file)


class Mailbox:
    """One logged-in IMAP session with the mailbox selected."""

    def __init__(self, endpoint: ImapEndpoint) -> None:
        """Prepare (``open`` connects)."""
        self.endpoint = endpoint
        self._imap: aioimaplib.IMAP4 | None = None
        self._announced = False
        """The server announced new mail (``EXISTS``) inside another command's answer; IDLE
        would not announce it again."""

    @property
    def imap(self) -> aioimaplib.IMAP4:
        if self._imap is None:
            raise MailboxError("IMAP", "not connected")
        return self._imap

    async def open(self) -> None:
        """Connect, log in and select the mailbox."""
        e = self.endpoint
        if e.tls == "tls":
            self._imap = aioimaplib.IMAP4_SSL(
                host=e.host, port=e.port, timeout=e.timeout, ssl_context=tls_context(e.ca_file)
            )
        else:
            self._imap = aioimaplib.IMAP4(host=e.host, port=e.port, timeout=e.timeout)
        await self.imap.wait_hello_from_server()
        self._check("LOGIN", await self.imap.login(e.username, e.password))
        self._check(f"SELECT {e.mailbox}", await self.imap.select(e.mailbox))

    async def close(self) -> None:
        """Log out (quietly: the connection may already be gone)."""
        if self._imap is None:
            return
        imap, self._imap = self._imap, None
        with contextlib.suppress(Exception):
            if imap.has_pending_idle():
                imap.idle_done()
            await asyncio.wait_for(imap.logout(), 5)

    @property
    def idle_offered(self) -> bool:
        """The server offers IDLE."""
        return bool(self.imap.has_capability("IDLE"))

    async def unseen(self) -> list[str]:
        """UIDs of the messages not yet seen, oldest first."""
        self._announced = False
        answer = self._check("UID SEARCH UNSEEN", await self.imap.uid_search("UNSEEN"))
        uids: list[str] = []
        # The last line is the completion text; untagged updates (``3 EXISTS``) may be mixed in.
        for line in answer.lines[:-1]:
            words = bytes(line).split()
            if words and all(w.isdigit() for w in words):
                uids += [w.decode() for w in words]
        return uids

    async def size(self, uid: str) -> int | None:
        """The message's size in bytes, or None when it is gone."""
        answer = self._check(
            "UID FETCH RFC822.SIZE", await self.imap.uid("fetch", uid, "(RFC822.SIZE)")
        )
        for line in answer.lines:
            found = _SIZE.search(bytes(line))
            if found is not None:
                return int(found.group(1))
        return None

    async def fetch(self, uid: str, *, headers_only: bool = False) -> bytes | None:
        """The raw message (or only its header section), without marking it seen."""
        part = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        answer = self._check("UID FETCH", await self.imap.uid("fetch", uid, f"({part})"))
        # A literal arrives as its own line (a bytearray) after the "* n FETCH (… {size}" line.
        for line in answer.lines:
            if isinstance(line, bytearray):
                return bytes(line)
        return None

    async def mark_seen(self, uid: str) -> None:
        """Flag the message ``\\Seen``."""
        self._check(
            "UID STORE +FLAGS (\\Seen)",
            await self.imap.uid("store", uid, "+FLAGS.SILENT", "(\\Seen)"),
        )

    async def wait(self, seconds: float, *, idle: bool) -> None:
        """Wait for new mail: in IDLE (at most ``seconds``) when offered and wanted, else sleep."""
        if self._announced:
            self._announced = False
            return
        if not (idle and self.idle_offered):
            await asyncio.sleep(seconds)
            return
        task = await self.imap.idle_start(timeout=seconds)
        try:
            pushed = await self.imap.wait_server_push(timeout=seconds + 5)
            log.debug("IMAP push", extra={"lines": len(pushed) if isinstance(pushed, list) else 0})
        except TimeoutError:
            pass
        finally:
            if self.imap.has_pending_idle():
                self.imap.idle_done()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, self.endpoint.timeout)

    def _check(self, command: str, answer: aioimaplib.Response) -> aioimaplib.Response:
        if any(isinstance(line, bytes) and line.endswith(b" EXISTS") for line in answer.lines):
            self._announced = True
        if answer.result != "OK":
            text = b" ".join(
                bytes(line) for line in answer.lines if isinstance(line, (bytes, bytearray))
            )
            raise MailboxError(command, text.decode(errors="replace")[:300])
        return answer
