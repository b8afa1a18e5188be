"""Control plane events: the append-only, hash-chained audit trail of each tenant.

Each event's hash covers its canonical fields and its predecessor's hash. Appending moves the
tenant's chain head with one conditional UPDATE (on the seq and hash it chained onto), so
concurrent appends on SQLite or PostgreSQL serialize without application locks, and queues a
webhook delivery for each matching subscription in the same transaction. ``verify_chain``
walks a chain in batches and reports the first edited, inserted, re-ordered or deleted event.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Row, Table, func, insert, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
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
    # seed 002: catalog, risk, approvals, rollouts, execution planes (control plane part II)
    "catalog_changed",
    "artifact_registered",
    "risk_assessed",
    "exception_requested",
    "exception_decided",
    "exception_expiring",
    "evidence_stored",
    "intent_created",
    "approval_requested",
    "approval_decided",
    "gate_evaluated",
    "rollout_promoted",
    "rollout_paused",
    "rollout_resumed",
    "rollout_rolled_back",
    "incident_changed",
    "connector_task",
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


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; appending fills in its tenant, seq and hashes."""

    type: str
    """One of ``EVENT_TYPES``."""
    action: str
    """Dotted lowercase action that happened, such as ``scope.create``."""
    outcome: str
    """``success``, ``failure``, ``denied`` or a domain outcome such as ``non_compliant``."""
    actor: str
    """Who did it, as ``Caller.actor`` renders them."""
    correlation_id: str
    """Request id that links the event to its request and its log lines."""
    scope_id: str | None = None
    """Scope the event concerns, if any."""
    device_id: str | None = None
    """Device the event concerns, if any."""
    manager: str | None = None
    """Package manager the event concerns, if any."""
    task_id: str | None = None
    """Execution-plane task the event belongs to, if any."""
    policy_version: str | None = None
    """Policy version in force, if any."""
    data: dict[str, Any] | None = None
    """Further structured detail (JSON)."""
    timestamp: datetime | None = None
    """When it happened; the time of appending if None."""


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

    The keyword arguments are the fields of ``NewEvent``; ``append_events`` says what else
    happens.

    Returns:
        The stored event (``id``, ``seq`` and ``hash`` set), not attached to the session.
    """
    new = NewEvent(
        type=type,
        action=action,
        outcome=outcome,
        actor=actor,
        correlation_id=correlation_id,
        scope_id=scope_id,
        device_id=device_id,
        manager=manager,
        task_id=task_id,
        policy_version=policy_version,
        data=data,
        timestamp=timestamp,
    )
    (event,) = await append_events(session, tenant_id, [new])
    return event


async def append_events(
    session: AsyncSession, tenant_id: str, new: Sequence[NewEvent]
) -> list[Event]:
    """Append events, in order, to the tenant's chain inside the caller's transaction.

    The head moves once for the whole batch and the rows go in as one multi-row INSERT, so a
    batch costs about as many round trips as a single event. A pending ``WebhookDelivery`` is
    queued for each active subscription of the tenant that matches an event's type; the
    webhook sender is woken once the transaction commits.

    Args:
        session: The caller's session, inside a write transaction the caller commits.
        tenant_id: Tenant whose chain grows.
        new: The events, oldest first.

    Returns:
        The stored events (``id``, ``seq`` and ``hash`` set), not attached to the session.
    """
    if not new:
        return []
    now = utcnow()
    events = [
        Event(
            tenant_id=tenant_id,
            type=n.type,
            scope_id=n.scope_id,
            device_id=n.device_id,
            manager=n.manager,
            task_id=n.task_id,
            action=n.action,
            policy_version=n.policy_version,
            outcome=n.outcome,
            timestamp=(n.timestamp or now).astimezone(UTC),
            actor=n.actor,
            correlation_id=n.correlation_id,
            data=n.data or {},
        )
        for n in new
    ]
    if session.new or session.dirty or session.deleted:
        # The statements below go to the connection directly, past autoflush.
        await session.flush()
    # Core statements on the session's connection: the ORM's per-statement bookkeeping cost
    # more than the round trips themselves (see bench/audit_append.py).
    conn = await session.connection()
    subscribed = await _move_head(conn, tenant_id, events)
    ids = await conn.execute(
        insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True),
        [{c: getattr(e, c) for c in _COLUMNS} for e in events],
    )
    for event, event_id in zip(events, ids.scalars(), strict=True):
        event.id = event_id
    if subscribed:
        await _queue_deliveries(session, conn, events)
    return events


_EVENTS: Final = cast(Table, Event.__table__)
_HEADS: Final = cast(Table, ChainHead.__table__)
_SUBSCRIPTIONS: Final = cast(Table, WebhookSubscription.__table__)
_DELIVERIES: Final = cast(Table, WebhookDelivery.__table__)
_COLUMNS: Final = tuple(c.name for c in _EVENTS.c if c.name != "id")
_HINTS_MAX: Final = 10_000
_head_hints: dict[str, tuple[int, str]] = {}
"""Each tenant's head as this process last moved it: tried first, saving a read per append.

Only a guess: the conditional UPDATE matches on seq and hash, so a stale hint (another
process appended, or our transaction rolled back) moves nothing and the head is read again.
"""


def _chain(events: list[Event], seq: int, prev_hash: str) -> None:
    for event in events:
        seq += 1
        event.seq, event.prev_hash = seq, prev_hash
        event.hash = prev_hash = event_hash(hashed_fields(event), prev_hash)


async def _move_head(conn: AsyncConnection, tenant_id: str, events: list[Event]) -> bool:
    """Chain ``events`` onto the tenant's head and move the head; whether webhooks exist."""
    subscribed = (
        select(_SUBSCRIPTIONS.c.id)
        .where(_SUBSCRIPTIONS.c.tenant_id == tenant_id, _SUBSCRIPTIONS.c.active.is_(True))
        .exists()
        .label("subscribed")
    )
    last = events[-1]
    head = _head_hints.get(tenant_id)
    while True:
        if head is None:
            row = (
                await conn.execute(
                    select(_HEADS.c.seq, _HEADS.c.hash).where(_HEADS.c.tenant_id == tenant_id)
                )
            ).first()
            if row is None:
                _chain(events, 0, GENESIS)
                # The tenant's first event is appended in the tenant's own transaction, so no
                # concurrent writer can race this insert.
                created = await conn.execute(
                    insert(_HEADS)
                    .values(tenant_id=tenant_id, seq=last.seq, hash=last.hash)
                    .returning(subscribed)
                )
                has_webhooks = bool(created.scalar_one())
                break
            head = (row.seq, row.hash)
        prev_seq, prev_hash = head
        _chain(events, prev_seq, prev_hash)
        moved = await conn.execute(
            update(_HEADS)
            .where(
                _HEADS.c.tenant_id == tenant_id,
                _HEADS.c.seq == prev_seq,
                _HEADS.c.hash == prev_hash,
            )
            .values(seq=last.seq, hash=last.hash)
            .returning(subscribed)
        )
        if (found := moved.first()) is not None:
            has_webhooks = bool(found.subscribed)
            break
        # A stale hint, or another writer moved the head first (PostgreSQL READ COMMITTED).
        head = None
    if len(_head_hints) >= _HINTS_MAX:
        _head_hints.clear()
    _head_hints[tenant_id] = (last.seq, last.hash)
    return has_webhooks


async def _queue_deliveries(
    session: AsyncSession, conn: AsyncConnection, events: list[Event]
) -> None:
    subscriptions = (
        await conn.execute(
            select(_SUBSCRIPTIONS.c.id, _SUBSCRIPTIONS.c.event_types).where(
                _SUBSCRIPTIONS.c.tenant_id == events[0].tenant_id,
                _SUBSCRIPTIONS.c.active.is_(True),
            )
        )
    ).all()
    deliveries = [
        {
            "tenant_id": event.tenant_id,
            "subscription_id": sub_id,
            "event_id": event.id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": event.timestamp,
        }
        for event in events
        for sub_id, types in subscriptions
        if event.type in types or ANY_TYPE in types
    ]
    if not deliveries:
        return
    await conn.execute(insert(_DELIVERIES), deliveries)
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
    walk = _Walk()
    # Events appended while we walk lie beyond the head read above; they are not ours to judge.
    async for rows in read_events(session, tenant_id, upto=head_seq, batch=batch):
        # Hashing is pure-Python CPU work (about 30 µs an event); in a thread the event loop
        # keeps serving other requests while a long chain is checked.
        found = await asyncio.to_thread(walk.check, rows)
        if found is not None:
            return ChainReport(False, walk.checked, head_seq, *found)

    def bad(seq: int, problem: str) -> ChainReport:
        return ChainReport(False, walk.checked, head_seq, seq, problem)

    if walk.expected - 1 < head_seq:
        return bad(
            walk.expected, f"events {walk.expected}..{head_seq} are missing (newest deleted)"
        )
    if walk.prev_hash != head_hash:
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
    return ChainReport(True, walk.checked, head_seq, None, None)


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
                return self.expected, f"event {self.expected} is missing (deleted)"
            if row.seq < self.expected:
                return row.seq, f"event {row.seq} is out of place (expected {self.expected})"
            self.checked += 1
            if event_hash(hashed_fields(row), row.prev_hash) != row.hash:
                return row.seq, (
                    f"event {row.seq}'s hash does not match its fields"
                    " (edited, or moved from another position)"
                )
            if row.prev_hash != self.prev_hash:
                return row.seq, (
                    f"event {row.seq}'s prev_hash is not the hash of event {row.seq - 1}"
                    " (inserted or re-ordered)"
                )
            self.expected, self.prev_hash = row.seq + 1, row.hash
        return None
