"""Sessions, beside the request path: the gateway's audit trail as one append-only hash chain.

Each record's hash covers its canonical fields and its predecessor's hash. Appending moves the
single chain-head row with one conditional UPDATE (on the seq and hash it chained onto), so
appenders in any number of processes serialize on that row, and one that lost a race simply
re-chains onto the new head. ``verify`` walks the chain in batches and reports the first
edited, inserted, re-ordered or deleted record, including a deleted newest one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Row, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sessions.canonical import GENESIS, canonical, iso, sha256_hex, to_json
from sessions.db import conflict_insert
from sessions.models import AuditChainHead, AuditRecord
from sessions.results import AuditCheck, AuditEntry

VERIFY_BATCH: Final = 1000
"""Rows read per query while walking or exporting; bounds memory whatever the length."""

_RECORDS: Final = cast(Table, AuditRecord.__table__)
_HEAD: Final = cast(Table, AuditChainHead.__table__)
_HEAD_ID: Final = 1


@dataclass(frozen=True, slots=True)
class NewAudit:
    """A record to append; appending fills in its seq, timestamp and hashes."""

    type: str
    """Dotted lowercase kind, such as ``message.received``."""
    principal_id: str | None
    """Who it concerns, if anyone."""
    channel: str | None
    """Channel it happened on, if any."""
    conversation_id: str | None
    """Conversation it happened in, if any."""
    data: dict[str, Any]
    """Further detail (JSON, already redacted by the caller)."""


def hashed_fields(record: AuditEntry | Row[Any]) -> dict[str, Any]:
    """The fields a record's hash covers: everything but the two hashes."""
    return {
        "seq": record.seq,
        "type": record.type,
        "principal_id": record.principal_id,
        "channel": record.channel,
        "conversation_id": record.conversation_id,
        "data": record.data,
        "timestamp": iso(record.timestamp),
    }


def record_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """sha256 over the predecessor hash, a newline and the canonical JSON of the fields."""
    return sha256_hex(prev_hash.encode() + b"\n" + canonical(fields))


def document(record: AuditEntry | Row[Any]) -> dict[str, Any]:
    """The record as exported: its hashed fields plus both hashes."""
    return {**hashed_fields(record), "prev_hash": record.prev_hash, "hash": record.hash}


class AuditChain:
    """Appends to the chain; one per ``SessionStore``.

    On PostgreSQL the head is read ``FOR UPDATE``, so concurrent appenders queue on the row
    lock instead of all racing for the UPDATE, losing and re-reading (with 50 appenders that
    herd cost three quarters of the throughput). On SQLite writers are already serialized, so
    the head as this store last left it is tried without reading it. Either way the UPDATE is
    conditional on the seq and hash it chained onto, which is what keeps the chain linear.
    """

    def __init__(self) -> None:
        self._hint: tuple[int, str] | None = None
        """The head as this store last moved it (SQLite only). Only a guess: a stale hint
        (another process appended, or our transaction rolled back) moves nothing and the head
        is read again."""

    async def append(
        self, conn: AsyncConnection, new: Sequence[NewAudit], now: datetime
    ) -> list[AuditEntry]:
        """Append records, in order, inside the caller's write transaction.

        Args:
            conn: A connection inside a write transaction the caller commits.
            new: The records, oldest first.
            now: Their timestamp.

        Returns:
            The stored records.
        """
        if not new:
            return []
        head = self._hint if conn.dialect.name == "sqlite" else None
        while True:
            if head is None:
                head = await self._read_head(conn)
            entries = _chain(new, now, *head)
            last = entries[-1]
            moved = await conn.execute(
                update(_HEAD)
                .where(_HEAD.c.id == _HEAD_ID, _HEAD.c.seq == head[0], _HEAD.c.hash == head[1])
                .values(seq=last.seq, hash=last.hash)
            )
            if moved.rowcount == 1:
                break
            # A stale hint, or another writer moved the head between our read and our UPDATE.
            head = None
        await conn.execute(insert(_RECORDS), [_row(e) for e in entries])
        self._hint = (last.seq, last.hash)
        return entries

    @staticmethod
    async def _read_head(conn: AsyncConnection) -> tuple[int, str]:
        row = (await conn.execute(select(_HEAD.c.seq, _HEAD.c.hash).with_for_update())).first()
        if row is None:
            # The genesis row; two first appenders both try, one insert is ignored.
            await conn.execute(
                conflict_insert(conn, _HEAD)
                .values(id=_HEAD_ID, seq=0, hash=GENESIS)
                .on_conflict_do_nothing()
            )
            return 0, GENESIS
        return int(row.seq), str(row.hash)


def _chain(new: Sequence[NewAudit], now: datetime, seq: int, prev_hash: str) -> list[AuditEntry]:
    entries = []
    for n in new:
        seq += 1
        unhashed = AuditEntry(
            seq, n.type, n.principal_id, n.channel, n.conversation_id, to_json(n.data), now, "", ""
        )
        digest = record_hash(hashed_fields(unhashed), prev_hash)
        entries.append(replace(unhashed, prev_hash=prev_hash, hash=digest))
        prev_hash = digest
    return entries


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {c.name: getattr(entry, c.name) for c in _RECORDS.c}


async def read_records(
    engine: AsyncEngine,
    *,
    after: int | None = None,
    upto: int | None = None,
    batch: int = VERIFY_BATCH,
) -> AsyncIterator[list[Row[Any]]]:
    """Yield records in seq order, ``batch`` rows per query (keyset pagination).

    Each batch is its own short read, so a slow consumer holds no connection.

    Args:
        engine: Where to read.
        after: Only records with a greater seq; None for all, even a forged seq below 1.
        upto: Only records with this seq or a smaller one; None for no bound.
        batch: Rows per query.
    """
    while True:
        stmt = select(_RECORDS)
        if after is not None:
            stmt = stmt.where(_RECORDS.c.seq > after)
        if upto is not None:
            stmt = stmt.where(_RECORDS.c.seq <= upto)
        async with engine.connect() as conn:
            rows = list((await conn.execute(stmt.order_by(_RECORDS.c.seq).limit(batch))).all())
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


async def verify(engine: AsyncEngine, *, batch: int = VERIFY_BATCH) -> AuditCheck:
    """Walk the chain from its first record and report the first thing wrong.

    Detects an edited record (its hash no longer matches its fields), an inserted or
    re-ordered one (seq is hashed, and each must carry its predecessor's hash), a deleted one
    (a gap in seq), a deleted newest one (the head records a later seq) and rows appended
    behind the head's back. Someone able to rewrite every later row and the head can forge a
    consistent chain; comparing with an earlier export of the head catches that.
    """
    async with engine.connect() as conn:
        row = (await conn.execute(select(_HEAD.c.seq, _HEAD.c.hash))).first()
    head_seq, head_hash = (0, GENESIS) if row is None else (int(row.seq), str(row.hash))
    walk = _Walk()
    # Records appended while we walk lie beyond the head read above; not ours to judge.
    async for rows in read_records(engine, upto=head_seq, batch=batch):
        # Hashing is pure-Python CPU work; in a thread the event loop keeps serving turns.
        found = await asyncio.to_thread(walk.check, rows)
        if found is not None:
            return AuditCheck(False, walk.checked, head_seq, *found)

    def bad(seq: int, problem: str) -> AuditCheck:
        return AuditCheck(False, walk.checked, head_seq, seq, problem)

    if walk.expected - 1 < head_seq:
        return bad(walk.expected, f"records {walk.expected}..{head_seq} are missing (deleted)")
    if walk.prev_hash != head_hash:
        return bad(head_seq, f"record {head_seq}'s hash differs from the chain head's")
    async with engine.connect() as conn:
        # One statement, so the head and the newest record come from the same snapshot.
        newest, head_now = (
            await conn.execute(
                select(
                    select(func.max(_RECORDS.c.seq)).scalar_subquery(),
                    select(_HEAD.c.seq).scalar_subquery(),
                )
            )
        ).one()
    if newest is not None and newest > (head_now or 0):
        return bad(
            (head_now or 0) + 1,
            f"records after the chain head (seq {head_now or 0}) exist (inserted behind its back)",
        )
    return AuditCheck(True, walk.checked, head_seq, None, None)


@dataclass(slots=True)
class _Walk:
    """Where a chain walk stands between batches."""

    expected: int = 1
    prev_hash: str = GENESIS
    checked: int = 0

    def check(self, rows: list[Row[Any]]) -> tuple[int, str] | None:
        """Check the next rows in seq order; the first bad seq and the problem, if any."""
        for row in rows:
            if row.seq > self.expected:
                return self.expected, f"record {self.expected} is missing (deleted)"
            if row.seq < self.expected:
                return row.seq, f"record {row.seq} is out of place (expected {self.expected})"
            self.checked += 1
            if record_hash(hashed_fields(row), row.prev_hash) != row.hash:
                return row.seq, (
                    f"record {row.seq}'s hash does not match its fields"
                    " (edited, or moved from another position)"
                )
            if row.prev_hash != self.prev_hash:
                return row.seq, (
                    f"record {row.seq}'s prev_hash is not the hash of record {row.seq - 1}"
                    " (inserted or re-ordered)"
                )
            self.expected, self.prev_hash = row.seq + 1, row.hash
        return None
