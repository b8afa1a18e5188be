"""Control plane events: the append-only, hash-chained audit trail of each tenant.

Each event's hash covers its canonical fields and its predecessor's hash; the tenant's chain
head moves with a conditional UPDATE, so concurrent appends on SQLite or PostgreSQL serialize
without locks held across awaits. Appending also queues a webhook delivery for every matching
subscription in the same transaction, and ``verify_chain`` walks a chain in batches to find
the first edited, inserted, re-ordered or deleted event.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from controlplane.models import (
    ChainHead,
    Event,
    WebhookDelivery,
    WebhookSubscription,
    utcnow,
)
from controlplane.signing import canonical

GENESIS: Final = "0" * 64
"""The predecessor hash of a tenant's first event."""

EVENT_TYPES: Final = (
    "policy_applied",
    "policy_rejected",
    "compliance_evaluated",
    "drift_detected",
    "remediation_started",
    "remediation_completed",
    "remediation_failed",
    "enforcement_decided",
    "device_registered",
    "inventory_reported",
    "access_changed",
    "scope_changed",
    "webhook_changed",
)
"""Seed 001 §8 event types plus the control plane's own administrative ones."""

ANY_TYPE: Final = "*"
"""A webhook subscription's wildcard: every event type."""

VERIFY_BATCH: Final = 1000
"""Rows read per query while walking a chain; bounds memory whatever the chain's length."""

EventRecord = Event | Row[Any]
"""An event as an ORM object or as a plain row of the events table (cheaper to stream)."""


def event_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """sha256 over the predecessor hash and the canonical JSON of the event's fields."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(fields)).hexdigest()


def hashed_fields(event: EventRecord) -> dict[str, Any]:
    """The fields an event's hash covers (everything but the surrogate id and the hashes)."""
    return {
        "tenant_id": event.tenant_id,
        "seq": event.seq,
        "type": event.type,
        "scope_id": event.scope_id,
        "device_id": event.device_id,
        "manager": event.manager,
        "task_id": event.task_id,
        "action": event.action,
        "policy_version": event.policy_version,
        "outcome": event.outcome,
        "timestamp": _iso(event.timestamp),
        "actor": event.actor,
        "correlation_id": event.correlation_id,
        "data": event.data,
    }


def event_document(event: EventRecord) -> dict[str, Any]:
    """The event as exported and sent to webhooks: its hashed fields plus both hashes."""
    return {**hashed_fields(event), "prev_hash": event.prev_hash, "hash": event.hash}


def _iso(moment: datetime) -> str:
    # Normalized to UTC because that is how the column reads back on both databases; a
    # caller's +02:00 timestamp would otherwise hash differently from its stored form.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


async def append_event(
    session: AsyncSession,
    *,
    tenant_id: str,
    type: str,
    action: str,
    outcome: str,
    actor: str,
    correlation_id: str,
    scope_id: str | None = None,
    device_id: str | None = None,
    manager: str | None = None,
    task_id: str | None = None,
    policy_version: str | None = None,
    data: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> Event:
    """Append one event to the tenant's chain inside the caller's transaction.

    Also queues a pending ``WebhookDelivery`` for each active subscription of the tenant that
    matches the event's type; the webhook sender is woken once the transaction commits.

    Args:
        session: The caller's session, inside a write transaction it will commit.
        tenant_id: Tenant whose chain grows.
        type: One of ``EVENT_TYPES``.
        action: Dotted lowercase action that happened, such as ``scope.create``.
        outcome: ``success``, ``failure``, ``denied`` or a domain outcome.
        actor: Who did it, as ``Caller.actor`` renders them.
        correlation_id: Request id that links the event to its request and logs.
        scope_id: Scope the event concerns, if any.
        device_id: Device the event concerns, if any.
        manager: Package manager the event concerns, if any.
        task_id: Execution-plane task the event belongs to, if any.
        policy_version: Policy version in force, if any.
        data: Further structured detail (JSON).
        timestamp: When it happened; now if omitted.

    Returns:
        The event, flushed (its ``id``, ``seq`` and ``hash`` are set).
    """
    event = Event(
        tenant_id=tenant_id,
        seq=0,
        type=type,
        scope_id=scope_id,
        device_id=device_id,
        manager=manager,
        task_id=task_id,
        action=action,
        policy_version=policy_version,
        outcome=outcome,
        timestamp=(timestamp or utcnow()).astimezone(UTC),
        actor=actor,
        correlation_id=correlation_id,
        data=data or {},
        prev_hash=GENESIS,
        hash="",
    )
    while True:
        head = (
            await session.execute(
                select(ChainHead.seq, ChainHead.hash).where(ChainHead.tenant_id == tenant_id)
            )
        ).first()
        prev_seq, prev_hash = (0, GENESIS) if head is None else (head.seq, head.hash)
        event.seq, event.prev_hash = prev_seq + 1, prev_hash
        event.hash = event_hash(hashed_fields(event), prev_hash)
        if head is None:
            # The tenant's first event: it is created in the tenant's own transaction, so no
            # concurrent writer can race this insert.
            await session.execute(
                insert(ChainHead).values(tenant_id=tenant_id, seq=event.seq, hash=event.hash)
            )
            break
        moved = await session.execute(
            update(ChainHead)
            .where(ChainHead.tenant_id == tenant_id, ChainHead.seq == prev_seq)
            .values(seq=event.seq, hash=event.hash)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            break
        # Another writer moved the head first (PostgreSQL READ COMMITTED); read it again.
    session.add(event)
    await session.flush()
    await _queue_deliveries(session, event)
    return event


async def _queue_deliveries(session: AsyncSession, event: Event) -> None:
    subscriptions = await session.execute(
        select(WebhookSubscription.id, WebhookSubscription.event_types).where(
            WebhookSubscription.tenant_id == event.tenant_id,
            WebhookSubscription.active.is_(True),
        )
    )
    matching = [
        sub_id for sub_id, types in subscriptions if event.type in types or ANY_TYPE in types
    ]
    if not matching:
        return
    session.add_all(
        WebhookDelivery(
            tenant_id=event.tenant_id,
            subscription_id=sub_id,
            event_id=event.id,
            status="pending",
            attempts=0,
            next_attempt_at=event.timestamp,
        )
        for sub_id in matching
    )
    sync = session.sync_session
    if not sync.info.get(_WAKE_PENDING):
        # Once per transaction; the flag is cleared when the listener fires.
        sync.info[_WAKE_PENDING] = True
        sa_event.listen(sync, "after_commit", _after_commit, once=True)


_WAKE_PENDING: Final = "goodbot.webhooks_due"
_wakers: weakref.WeakKeyDictionary[Engine, Callable[[], None]] = weakref.WeakKeyDictionary()


def _after_commit(session: Session) -> None:
    session.info.pop(_WAKE_PENDING, None)
    wake = _wakers.get(session.bind) if isinstance(session.bind, Engine) else None
    if wake is not None:
        wake()


def on_deliveries_committed(engine: AsyncEngine, wake: Callable[[], None]) -> Callable[[], None]:
    """Call ``wake`` whenever a transaction on ``engine`` commits new webhook deliveries.

    Handlers append events without knowing about webhooks; this lets the sender start at
    once instead of at its next poll.

    Args:
        engine: The engine whose sessions to watch.
        wake: Called on the event loop right after such a commit; must not block.

    Returns:
        A function that removes the hook.
    """
    _wakers[engine.sync_engine] = wake

    def remove() -> None:
        _wakers.pop(engine.sync_engine, None)

    return remove


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What walking a tenant's chain found."""

    ok: bool
    """True when every event links to its predecessor and the head matches the newest event."""
    checked: int
    """Events examined (the walk stops at the first problem)."""
    head_seq: int
    """Sequence number the tenant's chain head records (0 for an empty chain)."""
    first_bad_seq: int | None
    """Sequence number of the first event found wrong or missing; None when ``ok``."""
    problem: str | None
    """What is wrong there, as a sentence; None when ``ok``."""


async def read_events(
    session: AsyncSession,
    tenant_id: str,
    *,
    after: int | None = None,
    upto: int | None = None,
    batch: int = VERIFY_BATCH,
) -> AsyncIterator[list[Row[Any]]]:
    """Yield a tenant's events in seq order, ``batch`` rows per query (keyset pagination).

    Args:
        session: A session to read with.
        tenant_id: Whose chain.
        after: Only events with a greater seq; None for all, even a forged seq below 1.
        upto: Only events with this seq or a smaller one; None for no bound.
        batch: Rows per query.
    """
    table = Event.__table__
    while True:
        stmt = select(table).where(table.c.tenant_id == tenant_id)
        if after is not None:
            stmt = stmt.where(table.c.seq > after)
        if upto is not None:
            stmt = stmt.where(table.c.seq <= upto)
        rows = list((await session.execute(stmt.order_by(table.c.seq).limit(batch))).all())
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


async def chain_head(session: AsyncSession, tenant_id: str) -> tuple[int, str]:
    """The tenant's chain head as ``(seq, hash)``; ``(0, GENESIS)`` before its first event."""
    head = (
        await session.execute(
            select(ChainHead.seq, ChainHead.hash).where(ChainHead.tenant_id == tenant_id)
        )
    ).first()
    return (0, GENESIS) if head is None else (head.seq, head.hash)


async def verify_chain(
    session: AsyncSession, tenant_id: str, *, batch: int = VERIFY_BATCH
) -> ChainReport:
    """Walk a tenant's chain from its first event and report the first thing wrong.

    Detects an edited event (its hash no longer matches its fields), an inserted or
    re-ordered one (seq is hashed, and each event must carry its predecessor's hash), a
    deleted one (a gap in seq), a deleted newest one (the chain head records a later seq)
    and rows appended behind the head's back. Someone able to rewrite every later row and the
    head can forge a consistent chain; comparing with an earlier export or webhook copy of the
    head catches that.

    Args:
        session: A session to read with.
        tenant_id: Whose chain.
        batch: Rows per query; memory stays bounded however long the chain is.
    """
    head_seq, head_hash = await chain_head(session, tenant_id)
    expected, prev_hash, checked = 1, GENESIS, 0

    def bad(seq: int, problem: str) -> ChainReport:
        return ChainReport(False, checked, head_seq, seq, problem)

    # Events appended while we walk lie beyond the head read above; they are not ours to judge.
    async for rows in read_events(session, tenant_id, upto=head_seq, batch=batch):
        for row in rows:
            if row.seq > expected:
                return bad(expected, f"event {expected} is missing (deleted)")
            if row.seq < expected:
                return bad(row.seq, f"event {row.seq} is out of place (expected {expected})")
            checked += 1
            if event_hash(hashed_fields(row), row.prev_hash) != row.hash:
                return bad(
                    row.seq,
                    f"event {row.seq}'s hash does not match its fields"
                    " (edited, or moved from another position)",
                )
            if row.prev_hash != prev_hash:
                return bad(
                    row.seq,
                    f"event {row.seq}'s prev_hash is not the hash of event {row.seq - 1}"
                    " (inserted or re-ordered)",
                )
            expected, prev_hash = row.seq + 1, row.hash
    last = expected - 1
    if last < head_seq:
        return bad(expected, f"events {expected}..{head_seq} are missing (newest deleted)")
    if prev_hash != head_hash:
        return bad(head_seq, f"event {head_seq}'s hash differs from the chain head's")
    # One statement, so the head and the newest event come from the same snapshot.
    newest, head_now = (
        await session.execute(
            select(
                select(func.max(Event.seq)).where(Event.tenant_id == tenant_id).scalar_subquery(),
                select(ChainHead.seq).where(ChainHead.tenant_id == tenant_id).scalar_subquery(),
            )
        )
    ).one()
    if newest is not None and newest > (head_now or 0):
        return bad(
            (head_now or 0) + 1,
            f"events after the chain head (seq {head_now or 0}) exist (inserted behind its back)",
        )
    return ChainReport(True, checked, head_seq, None, None)
