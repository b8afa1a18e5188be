"""Sessions, beside the request path: the notification outbox and the poller's cursors.

The gateway's poller turns control-plane events into rows here (``enqueue``), one per
principal and channel, and channels take them when the person next shows up (``take``).
Correctness rests on the database, never on a lock in this process, so any number of
replicas may poll and serve at once:

- a notification is stored once per (principal, channel, dedupe key): the same event read
  twice, or by two replicas, inserts nothing the second time (``ON CONFLICT DO NOTHING``);
- taking is one conditional UPDATE … RETURNING (``delivered_at IS NULL``), so of two
  concurrent readers exactly one receives each notification;
- a push channel (one that sends without being asked, such as Slack) claims rows with the
  same kind of UPDATE, which sets ``retry_at`` to a lease instead of ``delivered_at``; it
  marks them delivered once sent, or pushes ``retry_at`` back after a failure. A process
  that dies while sending leaves the lease to run out, and the rows are claimed again: push
  delivery is at least once, and ``take`` leaves held rows alone;
- a cursor only moves forward (an upsert whose update is conditional on the position), and
  it can move in the same transaction as the notifications its events produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import CTE, ColumnElement, Row, Table, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sessions.canonical import to_json
from sessions.db import Database, conflict_insert
from sessions.models import Notification as NotificationRow
from sessions.models import NotificationCursor

TABLE: Final = cast(Table, NotificationRow.__table__)
CURSORS: Final = cast(Table, NotificationCursor.__table__)
_N: Final = TABLE.c
_K: Final = CURSORS.c

TAKE_LIMIT: Final = 100
"""Most notifications one ``take`` hands over; the rest wait for the next one."""
PUSH_ATTEMPTS: Final = 8
"""Claims a push channel gets per notification; after that it waits for ``take``."""
TEXT_MAX: Final = 2000
"""Longest notification text kept (the rest is cut)."""


@dataclass(frozen=True, slots=True)
class NewNotification:
    """A notification to store for one principal on one channel."""

    principal_id: str
    """The gateway principal (policy file key) it is for."""
    channel: str
    """The channel it is to be shown on, such as ``cli``."""
    topic: str
    """What it is about: ``approval.requested``, ``rollout.paused``, …"""
    text: str
    """Plain text for people, already free of markup."""
    dedupe_key: str
    """Names what happened; stored once per principal and channel."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """Structured facts (JSON) a channel may render as a card."""


@dataclass(frozen=True, slots=True)
class Notification:
    """A stored notification."""

    id: int
    """Increasing; orders a principal's notifications."""
    principal_id: str
    """Whom it is for."""
    channel: str
    """Where it is shown."""
    topic: str
    """What it is about."""
    text: str
    """Plain text for people."""
    data: dict[str, Any]
    """Structured facts."""
    dedupe_key: str
    """What happened, as the poller named it."""
    created_at: datetime
    """When it was stored."""
    delivered_at: datetime | None
    """When a channel took it; None while it waits."""
    attempts: int = 0
    """How often a push channel claimed it."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far a source has been read."""

    source: str
    """The source, such as ``controlplane:approval_requested``."""
    position: int
    """The last position (event seq) read and acted on."""
    event_at: datetime | None = None
    """The time of that event, if the source has one."""


def _from_row(row: Row[Any]) -> Notification:
    return Notification(
        id=row.id,
        principal_id=row.principal_id,
        channel=row.channel,
        topic=row.topic,
        text=row.text,
        data=dict(row.data),
        dedupe_key=row.dedupe_key,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        attempts=row.attempts,
    )


async def enqueue(
    conn: AsyncConnection, items: Sequence[NewNotification], now: datetime
) -> list[Notification]:
    """Insert the notifications not stored before; the ones this call stored, in order."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in items:
        key = (item.principal_id, item.channel, item.dedupe_key)
        rows.setdefault(
            key,
            {
                "principal_id": item.principal_id,
                "channel": item.channel,
                "topic": item.topic,
                "text": item.text[:TEXT_MAX],
                "data": to_json(dict(item.data)),
                "dedupe_key": item.dedupe_key,
                "created_at": now,
                "delivered_at": None,
            },
        )
    if not rows:
        return []
    stmt = (
        conflict_insert(conn, TABLE)
        .values(list(rows.values()))
        .on_conflict_do_nothing(index_elements=[_N.principal_id, _N.channel, _N.dedupe_key])
        .returning(*TABLE.c)
    )
    stored = [_from_row(row) for row in await conn.execute(stmt)]
    return sorted(stored, key=lambda n: n.id)


async def take(
    conn: AsyncConnection, principal_id: str, channel: str, now: datetime, limit: int
) -> list[Notification]:
    """Mark the principal's oldest undelivered notifications on ``channel`` delivered; those.

    One UPDATE whose condition repeats ``delivered_at IS NULL``, so a row is handed over once
    whatever runs beside it. On PostgreSQL the rows are chosen ``FOR UPDATE SKIP LOCKED``, so
    concurrent readers take disjoint batches instead of queueing on one (SQLite has a single
    writer and drops the clause), in a MATERIALIZED CTE: as a plain ``IN`` subquery the
    planner may re-run a locking ``LIMIT`` and hand over more than ``limit`` rows.
    """
    oldest = _oldest(
        [_N.principal_id == principal_id, _N.channel == channel, _N.delivered_at.is_(None)],
        now,
        limit,
    )
    stmt = (
        update(TABLE)
        .where(_N.id.in_(select(oldest.c.id)), _N.delivered_at.is_(None))
        .values(delivered_at=now)
        .returning(*TABLE.c)
    )
    taken = [_from_row(row) for row in await conn.execute(stmt)]
    return sorted(taken, key=lambda n: n.id)


def _free(now: datetime) -> ColumnElement[bool]:
    """Not held by a push channel's claim (never claimed, or its lease has run out)."""
    return or_(_N.retry_at.is_(None), _N.retry_at <= now)


def _claimable(channel: str) -> list[ColumnElement[bool]]:
    """Undelivered on ``channel`` with push attempts left (free or not)."""
    return [_N.channel == channel, _N.delivered_at.is_(None), _N.attempts < PUSH_ATTEMPTS]


def _oldest(where: list[ColumnElement[bool]], now: datetime, limit: int) -> CTE:
    """The ids of the oldest ``limit`` free rows matching ``where``, locked (see ``take``)."""
    return (
        select(_N.id)
        .where(*where, _free(now))
        .order_by(_N.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("oldest")
        .prefix_with("MATERIALIZED")
    )


async def claim(
    conn: AsyncConnection, channel: str, now: datetime, lease: timedelta, limit: int
) -> list[Notification]:
    """Hold the oldest free undelivered notifications on ``channel`` for ``lease``; those.

    Like ``take``, but the rows stay undelivered: ``retry_at`` is the lease and ``attempts``
    counts the claim. Rows claimed ``PUSH_ATTEMPTS`` times are left for ``take``.
    """
    oldest = _oldest(_claimable(channel), now, limit)
    stmt = (
        update(TABLE)
        .where(_N.id.in_(select(oldest.c.id)), _N.delivered_at.is_(None), _free(now))
        .values(retry_at=now + lease, attempts=_N.attempts + 1)
        .returning(*TABLE.c)
    )
    claimed = [_from_row(row) for row in await conn.execute(stmt)]
    return sorted(claimed, key=lambda n: n.id)


async def move_cursor(conn: AsyncConnection, cursor: Cursor, now: datetime) -> bool:
    """Set a source's cursor unless it is already at or past ``cursor.position``."""
    values = {"position": cursor.position, "event_at": cursor.event_at, "updated_at": now}
    insert = conflict_insert(conn, CURSORS).values(source=cursor.source, **values)
    upsert = insert.on_conflict_do_update(
        index_elements=[_K.source],
        set_={name: getattr(insert.excluded, name) for name in values},
        where=_K.position < insert.excluded.position,
    ).returning(_K.source)
    return (await conn.execute(upsert)).first() is not None


class NotificationOutbox:
    """Notifications waiting for their principals, and the poller's cursors.

    Reached as ``SessionStore.notifications``; every method is one short transaction.
    """

    def __init__(self, db: Database) -> None:
        """Share the store's database and its write discipline."""
        self._db = db

    async def enqueue(
        self,
        items: Sequence[NewNotification],
        *,
        cursor: Cursor | None = None,
        now: datetime | None = None,
    ) -> list[Notification]:
        """Store notifications, each once per principal, channel and dedupe key.

        Args:
            items: The notifications; those stored before (same principal, channel and
                dedupe key) are skipped, as are repeats within ``items``.
            cursor: Move this cursor forward in the same transaction, so the position is
                never past events whose notifications are not stored.
            now: The time they are stored at; the current time if None.

        Returns:
            The notifications this call stored, oldest first (empty for a repeat).
        """
        moment = now or datetime.now(UTC)
        async with self._db.writing() as conn:
            stored = await enqueue(conn, items, moment)
            if cursor is not None:
                await move_cursor(conn, cursor, moment)
        return stored

    async def take(
        self,
        principal_id: str,
        channel: str,
        *,
        limit: int = TAKE_LIMIT,
        now: datetime | None = None,
    ) -> list[Notification]:
        """The principal's undelivered notifications on ``channel``, oldest first, now delivered.

        Each notification is handed to exactly one caller, however many ask at once.

        Args:
            principal_id: Whose notifications.
            channel: The channel asking.
            limit: Most notifications to hand over; the rest wait for the next call.
            now: The delivery time; the current time if None.
        """
        # Most messages find nothing waiting: a read answers that without the write lock.
        probe = (
            select(_N.id)
            .where(
                _N.principal_id == principal_id, _N.channel == channel, _N.delivered_at.is_(None)
            )
            .limit(1)
        )
        async with self._db.reading() as conn:
            if (await conn.execute(probe)).first() is None:
                return []
        async with self._db.writing() as conn:
            return await take(conn, principal_id, channel, now or datetime.now(UTC), limit)

    async def claim(
        self,
        channel: str,
        *,
        lease: timedelta,
        limit: int = TAKE_LIMIT,
        now: datetime | None = None,
    ) -> list[Notification]:
        """Hold undelivered notifications on ``channel`` for a push channel to send, oldest first.

        Each row is held by one claimer until ``lease`` runs out; the claimer then calls
        ``sent`` or ``retry``. Whoever claims after the lease ran out sends it again.

        Args:
            channel: The push channel.
            lease: How long the claimer may take to send before others may claim the rows.
            limit: Most notifications to hold.
            now: The claim time; the current time if None.
        """
        moment = now or datetime.now(UTC)
        probe = select(_N.id).where(*_claimable(channel), _free(moment)).limit(1)
        async with self._db.reading() as conn:
            if (await conn.execute(probe)).first() is None:
                return []
        async with self._db.writing() as conn:
            return await claim(conn, channel, moment, lease, limit)

    async def sent(self, ids: Sequence[int], *, now: datetime | None = None) -> int:
        """Mark claimed notifications delivered; how many were still undelivered."""
        if not ids:
            return 0
        stmt = (
            update(TABLE)
            .where(_N.id.in_(list(ids)), _N.delivered_at.is_(None))
            .values(delivered_at=now or datetime.now(UTC), retry_at=None)
        )
        async with self._db.writing() as conn:
            return (await conn.execute(stmt)).rowcount

    async def retry(self, ids: Sequence[int], at: datetime, *, now: datetime | None = None) -> int:
        """Hold claimed notifications until ``at`` after a failed send; how many."""
        if not ids:
            return 0
        stmt = (
            update(TABLE).where(_N.id.in_(list(ids)), _N.delivered_at.is_(None)).values(retry_at=at)
        )
        async with self._db.writing() as conn:
            return (await conn.execute(stmt)).rowcount

    async def waiting(self, principal_id: str, channel: str) -> list[Notification]:
        """The principal's undelivered notifications on ``channel``, oldest first, not taken."""
        stmt = (
            select(TABLE)
            .where(
                _N.principal_id == principal_id, _N.channel == channel, _N.delivered_at.is_(None)
            )
            .order_by(_N.id)
        )
        async with self._db.reading() as conn:
            return [_from_row(row) for row in await conn.execute(stmt)]

    async def cursor(self, source: str) -> Cursor | None:
        """A source's cursor, or None before it was first read."""
        stmt = select(_K.source, _K.position, _K.event_at).where(_K.source == source)
        async with self._db.reading() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Cursor(row.source, row.position, row.event_at)

    async def set_cursor(self, cursor: Cursor, *, now: datetime | None = None) -> bool:
        """Move a source's cursor forward; False when it was already at or past that position."""
        async with self._db.writing() as conn:
            return await move_cursor(conn, cursor, now or datetime.now(UTC))

    async def purge_delivered(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Delete notifications delivered more than ``older_than`` ago; how many.

        Undelivered ones stay, whatever their age. A purged notification's dedupe key is
        forgotten, which is safe because the poller's cursors never move back.

        Raises:
            ValueError: ``older_than`` is not positive.
        """
        if older_than <= timedelta(0):
            raise ValueError("older_than must be positive")
        cutoff = (now or datetime.now(UTC)) - older_than
        async with self._db.writing() as conn:
            gone = await conn.execute(delete(TABLE).where(_N.delivered_at < cutoff))
        return gone.rowcount
