"""Control plane events: the append-only, hash-chained audit trail of each tenant.

Each event's hash covers its canonical fields and its predecessor's hash; the tenant's chain
head moves with a conditional UPDATE, so concurrent appends on SQLite or PostgreSQL serialize
without locks held across awaits.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.models import ChainHead, Event, utcnow
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
)
"""Seed 001 §8 event types plus the control plane's own administrative ones."""


def event_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """sha256 over the predecessor hash and the canonical JSON of the event's fields."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(fields)).hexdigest()


def hashed_fields(event: Event) -> dict[str, Any]:
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


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


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
    """Append one event to the tenant's chain inside the caller's transaction."""
    while True:
        head = (
            await session.execute(select(ChainHead).where(ChainHead.tenant_id == tenant_id))
        ).scalar_one_or_none()
        if head is None:
            head = ChainHead(tenant_id=tenant_id, seq=0, hash=GENESIS)
            session.add(head)
            await session.flush()
        prev_seq, prev_hash = head.seq, head.hash
        event = Event(
            tenant_id=tenant_id,
            seq=prev_seq + 1,
            type=type,
            scope_id=scope_id,
            device_id=device_id,
            manager=manager,
            task_id=task_id,
            action=action,
            policy_version=policy_version,
            outcome=outcome,
            timestamp=timestamp or utcnow(),
            actor=actor,
            correlation_id=correlation_id,
            data=data or {},
            prev_hash=prev_hash,
            hash="",
        )
        event.hash = event_hash(hashed_fields(event), prev_hash)
        moved = await session.execute(
            update(ChainHead)
            .where(ChainHead.tenant_id == tenant_id, ChainHead.seq == prev_seq)
            .values(seq=prev_seq + 1, hash=event.hash)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            session.add(event)
            await session.flush()
            session.expire(head)
            return event
        # Another writer moved the head first (PostgreSQL READ COMMITTED); read it again.
        session.expire(head)
