"""Sessions, beside the request path: the email channel's outbox and single-use codes.

The outbox makes "answered exactly once" hold across crashes. The channel writes an entry
(recipient, subject, threading headers and the reply's own Message-ID) right after the
message is admitted and before it marks the mail seen; the turn's reply is the conversation's
next outbound message. Sending claims the entry for a lease with one conditional UPDATE, so
neither a second replica nor the flush that runs after a restart sends it at the same time,
and ``sent`` stamps it once the relay accepted it. The one window left is a crash between the
relay's 250 and that UPDATE: the entry is then sent again, with the same Message-ID, which
mail clients and archives treat as the same message.

A confirmation code is stored only as its sha256, bound to the principal, the address it was
sent to and the confirmation; ``use`` spends it with a conditional UPDATE (again for the same
inbound Message-ID, so a redelivery after a crash is not refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import Row, Table, or_, select, update

from sessions import confirmations
from sessions.confirmations import TABLE as CONFIRMATIONS
from sessions.db import Database, conflict_insert
from sessions.messages import MESSAGES
from sessions.models import EmailCode, EmailOutbox
from sessions.results import UNFINISHED, Confirmation, MessageStatus

OUTBOX: Final = cast(Table, EmailOutbox.__table__)
CODES: Final = cast(Table, EmailCode.__table__)
ERROR_MAX: Final = 2000
"""Longest send error kept."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A reply owed by the email channel (the ``email_outbox`` row)."""

    message_id: int
    """The inbound message it answers."""
    conversation_id: str
    principal_id: str
    recipient: str
    """The verified address the reply goes to."""
    subject: str
    in_reply_to: str
    """The inbound Message-ID."""
    thread_references: str
    """The References header, the inbound Message-ID last."""
    reply_id: str
    """The reply's own Message-ID."""
    notes: tuple[str, ...]
    """Lines shown above the reply."""
    attempts: int
    """Send attempts so far, this one included when claimed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Where the inbound message of an outbox entry stands, and its stored reply."""

    status: MessageStatus | None
    """The inbound message's status (None when retention removed it)."""
    reply: str | None
    """The conversation's first outbound message after it (its reply), if any."""
    created_at: datetime | None
    """When the inbound message was stored."""
    pending: tuple[Confirmation, ...] = ()
    """Confirmations its turn proposed that still wait for a decision."""


def _entry(row: Row[Any]) -> OutboxEntry:
    return OutboxEntry(
        row.message_id,
        row.conversation_id,
        row.principal_id,
        row.recipient,
        row.subject,
        row.in_reply_to,
        row.thread_references,
        row.reply_id,
        tuple(row.notes or ()),
        row.attempts,
    )


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


class MailStore:
    """The email outbox and codes; ``SessionStore.mail``."""

    def __init__(self, db: Database) -> None:
        """Share the store's database and its write discipline."""
        self._db = db

    # The outbox.

    async def prepare(
        self,
        *,
        message_id: int,
        conversation_id: str,
        principal_id: str,
        recipient: str,
        subject: str,
        in_reply_to: str,
        thread_references: Sequence[str],
        reply_id: str,
        notes: Sequence[str] = (),
        now: datetime | None = None,
    ) -> bool:
        """Record the reply owed for an admitted message; False when it was recorded before.

        The first record wins, so a redelivered mail (after a crash) keeps the reply's
        Message-ID chosen the first time.
        """
        async with self._db.writing() as conn:
            stmt = (
                conflict_insert(conn, OUTBOX)
                .values(
                    message_id=message_id,
                    conversation_id=conversation_id,
                    principal_id=principal_id,
                    recipient=recipient,
                    subject=subject,
                    in_reply_to=in_reply_to,
                    thread_references=" ".join(thread_references),
                    reply_id=reply_id,
                    notes=list(notes),
                    created_at=_now(now),
                    attempts=0,
                )
                .on_conflict_do_nothing()
                .returning(OUTBOX.c.message_id)
            )
            return (await conn.execute(stmt)).first() is not None

    async def claim(
        self, message_id: int, lease: timedelta, *, now: datetime | None = None
    ) -> OutboxEntry | None:
        """Take an unsent entry for ``lease``; None when it is sent or someone holds it."""
        moment = _now(now)
        o = OUTBOX.c
        stmt = (
            update(OUTBOX)
            .where(
                o.message_id == message_id,
                o.sent_at.is_(None),
                or_(o.claimed_until.is_(None), o.claimed_until <= moment),
            )
            .values(claimed_until=moment + lease, attempts=o.attempts + 1)
            .returning(*OUTBOX.c)
        )
        async with self._db.writing() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _entry(row)

    async def sent(self, message_id: int, *, now: datetime | None = None) -> bool:
        """Stamp the entry sent (once); False when it already was."""
        o = OUTBOX.c
        stmt = (
            update(OUTBOX)
            .where(o.message_id == message_id, o.sent_at.is_(None))
            .values(sent_at=_now(now), claimed_until=None, last_error=None)
        )
        async with self._db.writing() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def failed(
        self, message_id: int, error: str, retry_in: timedelta, *, now: datetime | None = None
    ) -> None:
        """Record a failed attempt; the entry is due again after ``retry_in``."""
        stmt = (
            update(OUTBOX)
            .where(OUTBOX.c.message_id == message_id, OUTBOX.c.sent_at.is_(None))
            .values(claimed_until=_now(now) + retry_in, last_error=error[:ERROR_MAX])
        )
        async with self._db.writing() as conn:
            await conn.execute(stmt)

    async def due(self, *, limit: int = 100, now: datetime | None = None) -> list[int]:
        """Unsent, unclaimed entries whose turn has finished, oldest first (their message ids)."""
        moment = _now(now)
        o, m = OUTBOX.c, MESSAGES.c
        stmt = (
            select(o.message_id)
            .select_from(OUTBOX.outerjoin(MESSAGES, m.id == o.message_id))
            .where(
                o.sent_at.is_(None),
                or_(o.claimed_until.is_(None), o.claimed_until <= moment),
                # A message still unfinished is answered by its turn (or by recovery) first.
                or_(m.id.is_(None), m.status.not_in(UNFINISHED)),
            )
            .order_by(o.message_id)
            .limit(limit)
        )
        async with self._db.reading() as conn:
            return [int(row.message_id) for row in await conn.execute(stmt)]

    async def entry(self, message_id: int) -> OutboxEntry | None:
        """One outbox entry as stored."""
        async with self._db.reading() as conn:
            row = (
                await conn.execute(select(OUTBOX).where(OUTBOX.c.message_id == message_id))
            ).first()
        return None if row is None else _entry(row)

    async def is_sent(self, message_id: int) -> bool:
        """Whether the reply to ``message_id`` went out."""
        async with self._db.reading() as conn:
            found = (
                await conn.execute(
                    select(OUTBOX.c.sent_at).where(OUTBOX.c.message_id == message_id)
                )
            ).first()
        return found is not None and found.sent_at is not None

    async def answer(self, message_id: int) -> Answer:
        """The inbound message's status and the reply its turn stored, if it has one yet."""
        m = MESSAGES.c
        async with self._db.reading() as conn:
            inbound = (
                await conn.execute(
                    select(m.status, m.conversation_id, m.created_at).where(
                        m.id == message_id, m.direction == "in"
                    )
                )
            ).first()
            if inbound is None:
                return Answer(None, None, None)
            # Turns of a conversation run one at a time, so its next outbound message is the
            # reply to this one.
            reply = (
                await conn.execute(
                    select(m.text, m.created_at)
                    .where(
                        m.conversation_id == inbound.conversation_id,
                        m.direction == "out",
                        m.id > message_id,
                    )
                    .order_by(m.id)
                    .limit(1)
                )
            ).first()
            c = CONFIRMATIONS.c
            proposed = [
                c.conversation_id == inbound.conversation_id,
                c.state == "pending",
                c.created_at >= inbound.created_at,
            ]
            if reply is not None:
                proposed.append(c.created_at <= reply.created_at)
            rows = await conn.execute(
                select(CONFIRMATIONS).where(*proposed).order_by(c.created_at, c.id)
            )
            pending = tuple(confirmations.from_row(row) for row in rows)
        return Answer(
            inbound.status,
            None if reply is None else str(reply.text),
            inbound.created_at,
            pending,
        )

    # Single-use codes.

    async def issue_code(
        self,
        *,
        code_hash: str,
        confirmation_id: str,
        principal_id: str,
        sender: str,
        expires_at: datetime,
        now: datetime | None = None,
    ) -> None:
        """Store the hash of the code for a confirmation; an unused earlier code is replaced."""
        async with self._db.writing() as conn:
            stmt = conflict_insert(conn, CODES).values(
                code_hash=code_hash,
                confirmation_id=confirmation_id,
                principal_id=principal_id,
                sender=sender,
                created_at=_now(now),
                expires_at=expires_at,
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[CODES.c.confirmation_id],
                    set_={"code_hash": stmt.excluded.code_hash, "sender": stmt.excluded.sender},
                    where=CODES.c.used_at.is_(None),
                )
            )

    async def use_code(
        self,
        code_hash: str,
        *,
        principal_id: str,
        sender: str,
        used_by: str,
        now: datetime | None = None,
    ) -> str | None:
        """Spend a code; the confirmation id it decides, or None (unknown, used, expired or
        someone else's, deliberately not told apart)."""
        moment = _now(now)
        c = CODES.c
        stmt = (
            update(CODES)
            .where(
                c.code_hash == code_hash,
                c.principal_id == principal_id,
                c.sender == sender,
                c.expires_at > moment,
                or_(c.used_at.is_(None), c.used_by == used_by),
            )
            .values(used_at=moment, used_by=used_by)
            .returning(c.confirmation_id)
        )
        async with self._db.writing() as conn:
            found = (await conn.execute(stmt)).scalar_one_or_none()
        return None if found is None else str(found)
