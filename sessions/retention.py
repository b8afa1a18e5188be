"""Sessions, beside the request path: retention, what ``goodbot sessions purge`` deletes."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta

from sqlalchemy import delete, exists
from sqlalchemy.ext.asyncio import AsyncConnection

from sessions.audit import AuditChain, NewAudit
from sessions.confirmations import TABLE as CONFIRMATIONS
from sessions.messages import CONVERSATIONS, MESSAGES, PROCESSED
from sessions.results import FINISHED, UNFINISHED, Purged


async def purge(
    conn: AsyncConnection, chain: AuditChain, older_than: timedelta, now: datetime
) -> Purged:
    """Delete what retention allows inside the caller's transaction and audit the counts.

    Removes finished messages and their de-duplication entries, and finished (executed,
    failed, denied, expired) confirmations, older than ``older_than``; then conversations left
    empty and idle as long. Never touches unfinished messages (nor the entry that keeps their
    retries out), pending or in-flight confirmations (crash recovery still needs them),
    conversation references, subscriptions or the audit chain.

    Raises:
        ValueError: ``older_than`` is not positive.
    """
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive")
    cutoff = now - older_than
    m, c, conv = MESSAGES.c, CONFIRMATIONS.c, CONVERSATIONS.c
    gone_messages = await conn.execute(
        delete(MESSAGES).where(m.created_at < cutoff, m.status.not_in(UNFINISHED))
    )
    unfinished = exists().where(m.id == PROCESSED.c.message_id, m.status.in_(UNFINISHED))
    gone_events = await conn.execute(
        delete(PROCESSED).where(PROCESSED.c.received_at < cutoff, ~unfinished)
    )
    gone_confirmations = await conn.execute(
        delete(CONFIRMATIONS).where(c.created_at < cutoff, c.state.in_(FINISHED))
    )
    # Last, because the deletes above are what can leave a conversation empty.
    gone_conversations = await conn.execute(
        delete(CONVERSATIONS).where(
            conv.last_activity_at < cutoff,
            ~exists().where(m.conversation_id == conv.id),
            ~exists().where(c.conversation_id == conv.id),
        )
    )
    purged = Purged(
        messages=gone_messages.rowcount,
        processed_events=gone_events.rowcount,
        confirmations=gone_confirmations.rowcount,
        conversations=gone_conversations.rowcount,
    )
    record = NewAudit(
        "sessions.purged", None, None, None, {"cutoff": cutoff.isoformat(), **asdict(purged)}
    )
    await chain.append(conn, [record], now)
    return purged
