"""Sessions, beside the request path: the durable inbox and conversation history.

``admit`` is the gateway's first write for a delivery: in one transaction it records the
channel's event id (a retried delivery is dropped), finds or opens the conversation and stores
the message as ``accepted``, before anything processes it. After a crash ``pending`` finds the
messages that were accepted but never finished.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Row, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sessions.db import conflict_insert
from sessions.models import Conversation, Message, ProcessedEvent
from sessions.results import MESSAGE_STATUSES, UNFINISHED, Admitted, MessageStatus, StoredMessage

ERROR_MAX: Final = 2000
"""Longest error text kept (the rest is cut)."""

CONVERSATIONS: Final = cast(Table, Conversation.__table__)
MESSAGES: Final = cast(Table, Message.__table__)
PROCESSED: Final = cast(Table, ProcessedEvent.__table__)


class DuplicateEventError(Exception):
    """The channel delivered this event id before; raised to roll the admitting transaction back.

    Attributes:
        channel: Channel of the delivery.
        event_id: The channel's event id.
    """

    def __init__(self, channel: str, event_id: str) -> None:
        super().__init__(f"{channel} event {event_id!r} was admitted before")
        self.channel = channel
        self.event_id = event_id


def from_row(row: Row[Any]) -> StoredMessage:
    """A stored message row as its result dataclass."""
    return StoredMessage(**row._asdict())


async def conversation(
    conn: AsyncConnection, channel: str, key: str, principal_id: str, now: datetime
) -> str:
    """The id of the channel's conversation ``key``, opened now if new; its activity is bumped."""
    fresh = "conv_" + uuid.uuid4().hex[:20]
    new = conflict_insert(conn, CONVERSATIONS).values(
        id=fresh,
        channel=channel,
        external_key=key,
        principal_id=principal_id,
        created_at=now,
        last_activity_at=now,
    )
    # One statement both finds and creates, so replicas admitting a conversation's first
    # messages at once agree on a single row.
    stmt = new.on_conflict_do_update(
        index_elements=[CONVERSATIONS.c.channel, CONVERSATIONS.c.external_key],
        set_={"last_activity_at": new.excluded.last_activity_at},
    ).returning(CONVERSATIONS.c.id)
    return str((await conn.execute(stmt)).scalar_one())


async def admit(
    conn: AsyncConnection,
    *,
    channel: str,
    event_id: str,
    conversation_key: str,
    principal_id: str,
    text: str,
    channel_message_id: str | None,
    now: datetime,
) -> Admitted:
    """Store an inbound message as ``accepted`` (see ``SessionStore.admit``).

    Raises:
        DuplicateEventError: the event id was admitted before; the caller rolls back.
    """
    conversation_id = await conversation(conn, channel, conversation_key, principal_id, now)
    message_id = (
        await conn.execute(
            insert(MESSAGES)
            .values(
                conversation_id=conversation_id,
                direction="in",
                channel=channel,
                channel_message_id=channel_message_id,
                principal_id=principal_id,
                text=text,
                status="accepted",
                created_at=now,
            )
            .returning(MESSAGES.c.id)
        )
    ).scalar_one()
    # Last, so the common case costs no extra statement; on a repeat the caller rolls back the
    # two writes above. A concurrent repeat waits here for the first delivery to commit.
    recorded = await conn.execute(
        conflict_insert(conn, PROCESSED)
        .values(
            channel=channel,
            event_id=event_id,
            received_at=now,
            message_id=message_id,
            conversation_id=conversation_id,
        )
        .on_conflict_do_nothing()
        .returning(PROCESSED.c.message_id)
    )
    if recorded.first() is None:
        raise DuplicateEventError(channel, event_id)
    return Admitted(True, int(message_id), conversation_id)


async def first_admission(conn: AsyncConnection, channel: str, event_id: str) -> Admitted:
    """What the first delivery of a repeated event became."""
    row = (
        await conn.execute(
            select(PROCESSED.c.message_id, PROCESSED.c.conversation_id).where(
                PROCESSED.c.channel == channel, PROCESSED.c.event_id == event_id
            )
        )
    ).one()
    return Admitted(False, int(row.message_id), str(row.conversation_id))


async def mark(
    conn: AsyncConnection, message_id: int, status: MessageStatus, error: str | None, now: datetime
) -> bool:
    """Set an inbound message's status; False when there is no such message."""
    if status not in MESSAGE_STATUSES:
        raise ValueError(f"unknown message status {status!r}")
    finished = status in ("done", "failed")
    result = await conn.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == message_id, MESSAGES.c.direction == "in")
        .values(
            status=status,
            processed_at=now if finished else None,
            error=None if error is None else error[:ERROR_MAX],
        )
    )
    return result.rowcount == 1


async def reply(
    conn: AsyncConnection,
    *,
    conversation_id: str,
    text: str,
    principal_id: str | None,
    channel_message_id: str | None,
    in_reply_to: int | None,
    now: datetime,
) -> int:
    """Store an outbound message (``done``) and finish the inbound one it answers, if named."""
    touched = (
        await conn.execute(
            update(CONVERSATIONS)
            .where(CONVERSATIONS.c.id == conversation_id)
            .values(last_activity_at=now)
            .returning(CONVERSATIONS.c.channel)
        )
    ).first()
    if touched is None:
        raise LookupError(f"no conversation {conversation_id!r}")
    message_id = (
        await conn.execute(
            insert(MESSAGES)
            .values(
                conversation_id=conversation_id,
                direction="out",
                channel=touched.channel,
                channel_message_id=channel_message_id,
                principal_id=principal_id,
                text=text,
                status="done",
                created_at=now,
                processed_at=now,
            )
            .returning(MESSAGES.c.id)
        )
    ).scalar_one()
    if in_reply_to is not None:
        await mark(conn, in_reply_to, "done", None, now)
    return int(message_id)


async def pending(
    conn: AsyncConnection, limit: int, before: datetime | None = None
) -> list[StoredMessage]:
    """Inbound messages accepted or in processing (admitted before ``before``), oldest first."""
    where: list[Any] = [MESSAGES.c.direction == "in", MESSAGES.c.status.in_(UNFINISHED)]
    if before is not None:
        where.append(MESSAGES.c.created_at < before)
    rows = await conn.execute(select(MESSAGES).where(*where).order_by(MESSAGES.c.id).limit(limit))
    return [from_row(row) for row in rows]


async def history(conn: AsyncConnection, conversation_id: str, limit: int) -> list[StoredMessage]:
    """The newest ``limit`` messages of a conversation, oldest first."""
    rows = await conn.execute(
        select(MESSAGES)
        .where(MESSAGES.c.conversation_id == conversation_id)
        .order_by(MESSAGES.c.id.desc())
        .limit(limit)
    )
    return [from_row(row) for row in reversed(rows.all())]
