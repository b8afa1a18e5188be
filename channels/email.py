"""Email channel: a mailbox read over IMAP, replies through an SMTP relay (channels).

``run`` is a background duty of the gateway. Each round it reads the unseen messages and,
for each, in this order:

1. Loops: automatic mail, bounces, list mail and goodbot's own are ignored
   (``email_parse.loop_reason``), and so is a sender over the per-address burst limit.
2. Trust: only a From domain authenticated by a configured receiving server counts
   (``email_trust``); anything else is ignored.
3. The request: the new text (``email_parse.body``), or a ``CONFIRM``/``DENY`` code
   (``email_codes``), which becomes ``/confirm <id>`` once the store has spent the code.
4. Admission through the gateway (policy, size, rate; stored durably, de-duplicated by the
   Message-ID), then the outbox entry for the reply (``sessions.mail``), and only then is the
   message marked ``\\Seen``: a crash before that leaves it unseen, and the next round admits
   it again as a duplicate and writes nothing new.
5. The turn runs in a task; its stored reply goes out through the outbox, threaded.

Every ignored or refused message is audited as ``message.refused`` (metadata only) and never
answered, except when a trusted, known sender is owed the reason: a message over a size limit
(the limit is named) or a code that cannot be used. After a
restart the gateway's ``recover`` answers unfinished turns into the store, and the outbox
flush at the start of ``run`` sends what is owed, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import make_msgid
from typing import Any, Final, Protocol

import aioimaplib
import aiosmtplib

from channels import email_codes, email_parse, email_trust
from channels.base import Admission, InboundMessage, RefusedError, Turns
from channels.email_imap import ImapEndpoint, Mailbox, MailboxError
from channels.email_smtp import Outgoing, SmtpEndpoint, compose, send
from policy.limits import RateLimiter
from sessions.mail import MailStore
from sessions.results import UNFINISHED, Confirmation

log = logging.getLogger(__name__)

CHANNEL: Final = "email"
_EVENT_ID_MAX: Final = 200
_SLASH_DECISION: Final = re.compile(r"^\s*/(approve|confirm|deny)\s+cf_", re.I)
LEASE: Final = timedelta(seconds=60)
"""How long a sender holds an outbox entry before another may try it."""
RETRY: Final = timedelta(seconds=30)
"""When a reply the relay refused is tried again."""


class MailTurns(Turns, Protocol):
    """The gateway as the email channel sees it: ``Turns`` plus auditing its own refusals."""

    async def refuse(
        self, message: InboundMessage, rule: str, reason: str, *, verified: bool = False
    ) -> None:
        """Audit a delivery the channel refused before admission (metadata only); the sender
        is attributed to a principal only when ``verified``."""
        ...


@dataclass(frozen=True, slots=True)
class MailConfig:
    """What the email channel is told by the composition root."""

    address: str
    """goodbot's own address: replies come from it, mail from it is never answered."""
    imap: ImapEndpoint
    smtp: SmtpEndpoint
    authserv_ids: tuple[str, ...]
    """Receiving servers whose Authentication-Results are trusted."""
    code_secret: bytes
    """Key deriving the confirmation codes."""
    display_name: str = "goodbot"
    own_addresses: frozenset[str] = frozenset()
    """Further addresses of goodbot's (aliases); never answered either."""
    idle: bool = True
    """Wait in IMAP IDLE when the server offers it."""
    poll_seconds: float = 30.0
    """Without IDLE: how often the mailbox is read; with it, how often IDLE is renewed."""
    max_email_bytes: int = 10 * 1024 * 1024
    """Larger mail is not downloaded; a known sender is told the limit."""
    sender_rate_per_minute: int = 10
    """Mail one address may send per minute before the rest is ignored (loop brake)."""


@dataclass
class EmailChannel:
    """The email channel's duty over a ``MailTurns`` implementation and the mail store."""

    turns: MailTurns
    mail: MailStore
    config: MailConfig
    clock: Callable[[], float] = time.monotonic
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """Turns running after their admission."""
    limiter: RateLimiter = field(default_factory=RateLimiter)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while the mailbox is open (tests and readiness wait on it)."""

    # The duty.

    async def run(self) -> None:
        """Send the replies owed, then read the mailbox until cancelled (reconnecting)."""
        await self.flush()
        backoff = 1.0
        while True:
            try:
                async with self._mailbox() as box:
                    backoff = 1.0
                    while True:
                        taken = await self.round(box)
                        await self.flush()
                        if not taken:
                            # Mail that arrived during a round may already have been announced
                            # in that round's answers, so IDLE would not announce it again:
                            # wait only after a round that found nothing.
                            await box.wait(self.config.poll_seconds, idle=self.config.idle)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, MailboxError) as exc:
                log.warning(
                    "mailbox unavailable; retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}", "in_seconds": backoff},
                )
            except Exception:
                # The outermost layer of the duty (the store or the gateway failing): the
                # message in hand stays unseen, so it is taken again once this passes.
                log.exception("the email duty failed; retrying", extra={"in_seconds": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    @contextlib.asynccontextmanager
    async def _mailbox(self) -> AsyncIterator[Mailbox]:
        box = Mailbox(self.config.imap)
        try:
            await box.open()
            self.connected.set()
            yield box
        finally:
            self.connected.clear()
            await box.close()

    async def round(self, box: Mailbox) -> int:
        """Take every unseen message once; how many were taken."""
        taken = 0
        for uid in await box.unseen():
            size = await box.size(uid)
            if size is None:
                continue  # expunged meanwhile
            oversize = size > self.config.max_email_bytes
            raw = await box.fetch(uid, headers_only=oversize)
            if raw is None:
                continue
            # Anything failing here (the store, the gateway) propagates: the message stays
            # unseen and is taken again. A message that cannot be parsed is ignored instead.
            await self.receive(raw, oversize=size if oversize else None)
            await box.mark_seen(uid)
            taken += 1
        return taken

    async def close(self) -> None:
        """Cancel the turns still running (admitted turns are recovered at the next start)."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # One message.

    async def receive(self, raw: bytes, *, oversize: int | None = None) -> str:
        """Take one message: ignore it, refuse it, or admit it and start its turn.

        Returns once the outcome is durable (audited, or admitted with its outbox entry), so
        the caller may mark the message seen. The outcome, for logs and tests: ``ignored``,
        ``refused``, ``duplicate`` or ``admitted``.
        """
        try:
            read = self._read(raw, whole=oversize is None)
        except Exception:
            # Malformed beyond what the parsers tolerate: set aside (seen), never retried.
            log.exception("an unreadable message was ignored")
            digest = "<sha256:" + hashlib.sha256(raw).hexdigest()[:40] + "@goodbot>"
            unreadable = InboundMessage(CHANNEL, "", digest, "", "", None)
            await self.turns.refuse(unreadable, "email.unreadable", "the message cannot be parsed")
            return "ignored"
        thread, address, subject = read.thread, read.address, read.subject
        claimed = InboundMessage(
            CHANNEL, address or "", _event_id(thread.message_id), "", "", thread.message_id
        )
        if address is None:
            await self.turns.refuse(claimed, "email.from", "From does not name exactly one address")
            return "ignored"
        if read.loop is not None:
            await self.turns.refuse(claimed, "email.loop", f"not answered: {read.loop}")
            return "ignored"
        burst = self.limiter.take(address, self.config.sender_rate_per_minute, self.clock())
        if not burst.allowed:
            await self.turns.refuse(claimed, "email.sender_rate", burst.reason)
            return "ignored"
        if read.verdict is None or not read.verdict.trusted:
            rule, reason = ("email.untrusted", "no verdict")
            if read.verdict is not None:
                rule, reason = read.verdict.rule, read.verdict.reason
            await self.turns.refuse(claimed, rule, reason)
            return "ignored"
        if oversize is not None or read.body is None:
            return await self._too_large(claimed, address, subject, thread, oversize or 0)
        body = read.body
        event_id = claimed.event_id
        text = body.text or _subject_request(subject)
        decision = email_codes.decision_in(text)
        if decision is not None:
            spent = await self._spend(claimed, address, decision, subject, thread)
            if spent is None:
                return "refused"
            text = spent
        elif _SLASH_DECISION.match(text):
            await self.turns.refuse(
                claimed, "email.code", "a confirmation id instead of a code", verified=True
            )
            await self._tell(
                address,
                subject,
                thread,
                "By email, a change is confirmed with the code from my message: reply with "
                "CONFIRM and the code (or DENY and the code). Nothing was changed.",
            )
            return "refused"
        inbound = InboundMessage(
            CHANNEL,
            address,
            event_id,
            f"{address}:{thread.root}"[:500],
            text,
            thread.message_id[:_EVENT_ID_MAX],
        )
        try:
            admission = await self.turns.admit(inbound)
        except RefusedError as exc:
            # Audited by the gateway. Only a known sender's oversize request is told why: a
            # rate refusal must not answer a burst, and strangers learn nothing.
            if exc.code == "too_large":
                await self._tell(
                    address, subject, thread, f"Sorry, I can't take that: {exc.message}."
                )
            return "refused"
        notes = [str(n.get("text") or n) for n in admission.notifications]
        if body.attachments:
            notes.append(
                "Note: I ignored the attachment(s) "
                + ", ".join(body.attachments)
                + "; I only read the text of an email."
            )
        await self.mail.prepare(
            message_id=admission.message_id,
            conversation_id=admission.conversation_id,
            principal_id=admission.sender.principal,
            recipient=address,
            subject=email_parse.reply_subject(subject),
            in_reply_to=thread.message_id,
            thread_references=thread.reply_references(),
            reply_id=make_msgid(domain=self._domain()),
            notes=notes,
        )
        if admission.duplicate:
            # Its reply is owed by the outbox (or was sent); the flush takes care of it.
            return "duplicate"
        self._spawn(self._answer(admission))
        return "admitted"

    async def _spend(
        self,
        claimed: InboundMessage,
        address: str,
        decision: tuple[str, str],
        subject: str,
        thread: email_parse.Thread,
    ) -> str | None:
        """The command a valid code stands for, or None (refused, audited and told)."""
        verb, code = decision
        sender = self.turns.sender(CHANNEL, address)
        if sender is None:
            await self.turns.refuse(claimed, "default:unknown-sender", "unknown sender")
            return None
        confirmation_id = await self.mail.use_code(
            email_codes.code_hash(code),
            principal_id=sender.principal,
            sender=address,
            used_by=thread.message_id,
        )
        if confirmation_id is None:
            reason = "the code is unknown, already used, expired or not sent to this address"
            await self.turns.refuse(claimed, "email.code", reason, verified=True)
            await self._tell(address, subject, thread, f"Nothing happened: {reason}.")
            return None
        return f"/{verb} {confirmation_id}"

    async def _too_large(
        self,
        claimed: InboundMessage,
        address: str,
        subject: str,
        thread: email_parse.Thread,
        size: int,
    ) -> str:
        limit = self.config.max_email_bytes
        reason = f"the email is {size} bytes; the limit is {limit} bytes"
        await self.turns.refuse(claimed, "email.size", reason, verified=True)
        if self.turns.sender(CHANNEL, address) is not None:
            await self._tell(address, subject, thread, f"Sorry, I can't take that: {reason}.")
        return "refused"

    def _read(self, raw: bytes, *, whole: bool) -> _Read:
        """Everything the checks need from the raw message (pure; raises on garbage)."""
        message = email_parse.parse(raw)
        address = email_parse.sender(message)
        loop = verdict = None
        if address is not None:
            loop = email_parse.loop_reason(message, address, self._own())
            domain = address.rpartition("@")[2]
            verdict = email_trust.verify(message.items(), domain, self.config.authserv_ids)
        return _Read(
            email_parse.thread(message, raw),
            address,
            str(message.get("Subject") or ""),
            loop,
            verdict,
            email_parse.body(message) if whole else None,
        )

    # Replies.

    async def _answer(self, admission: Admission) -> None:
        async def emit(_: dict[str, Any]) -> None:
            return None  # email gets the whole reply at the end

        try:
            await self.turns.run(admission, emit)
        except RefusedError:
            pass  # stored as failed; the outbox sends the apology
        except Exception:
            log.exception("an email turn failed", extra={"message_id": admission.message_id})
        await self.deliver(admission.message_id)

    async def flush(self) -> int:
        """Send every reply owed whose turn has finished; how many went out."""
        sent = 0
        for message_id in await self.mail.due():
            sent += await self.deliver(message_id)
        return sent

    async def deliver(self, message_id: int) -> int:
        """Send the reply owed for ``message_id`` once; 1 when it went out now, else 0."""
        entry = await self.mail.claim(message_id, LEASE)
        if entry is None:
            return 0  # sent already, or another sender holds it
        answer = await self.mail.answer(message_id)
        if answer.status in UNFINISHED:
            await self.mail.failed(message_id, "the turn has not finished", RETRY)
            return 0
        if answer.reply is not None:
            text = answer.reply
        elif answer.status == "failed":
            text = (
                "Sorry, something went wrong on our side and nothing was done; "
                "the operators have the log."
            )
        else:
            text = "Sorry, I lost track of this message; please send it again."
        parts = [*entry.notes, text]
        for confirmation in answer.pending:
            parts.append(await self._code_block(confirmation, entry.principal_id, entry.recipient))
        outgoing = Outgoing(
            entry.recipient,
            entry.subject,
            "\n\n".join(parts) + "\n",
            entry.reply_id,
            entry.in_reply_to,
            entry.thread_references.split(),
        )
        try:
            await send(
                compose(outgoing, self.config.address, self.config.display_name),
                self.config.smtp,
                self.config.address,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning(
                "the relay did not take a reply; it is tried again",
                extra={"message_id": message_id, "error": type(exc).__name__},
            )
            await self.mail.failed(message_id, f"{type(exc).__name__}: {exc}", RETRY)
            return 0
        await self.mail.sent(message_id)
        return 1

    async def _code_block(self, confirmation: Confirmation, principal: str, address: str) -> str:
        code = email_codes.code_for(self.config.code_secret, confirmation.id, principal, address)
        await self.mail.issue_code(
            code_hash=email_codes.code_hash(code),
            confirmation_id=confirmation.id,
            principal_id=principal,
            sender=address,
            expires_at=confirmation.expires_at,
        )
        until = confirmation.expires_at.strftime("%H:%M UTC")
        return (
            f"To go ahead, reply to this email with:\n\n    CONFIRM {code}\n\n"
            f"or, to call it off: DENY {code}\n\n"
            f"The code works once, only from {address}, until {until}."
        )

    async def _tell(
        self, address: str, subject: str, thread: email_parse.Thread, text: str
    ) -> None:
        """A reply outside any turn (a refusal); not stored, so a redelivery repeats it."""
        outgoing = Outgoing(
            address,
            email_parse.reply_subject(subject),
            text + "\n",
            make_msgid(domain=self._domain()),
            thread.message_id,
            thread.reply_references(),
        )
        try:
            await send(
                compose(outgoing, self.config.address, self.config.display_name),
                self.config.smtp,
                self.config.address,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("the relay did not take a refusal", extra={"error": type(exc).__name__})

    # Helpers.

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _own(self) -> frozenset[str]:
        return self.config.own_addresses | {self.config.address.lower()}

    def _domain(self) -> str:
        return self.config.address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class _Read:
    """What ``EmailChannel._read`` found in a message."""

    thread: email_parse.Thread
    address: str | None
    subject: str
    loop: str | None
    verdict: email_trust.Verdict | None
    body: email_parse.Body | None
    """None when only the header section was fetched (an oversize message)."""


def _event_id(message_id: str) -> str:
    """The admission's event id: the Message-ID, or its hash when it is too long to key on."""
    if len(message_id) <= _EVENT_ID_MAX:
        return message_id
    return "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()


def _subject_request(subject: str) -> str:
    """An empty body asks what the subject says (unless the subject is a reply's)."""
    clean = " ".join(subject.split())
    return "" if re.match(r"^(re|aw|sv|fwd?)\s*:", clean, re.I) else clean
