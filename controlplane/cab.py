"""Control plane CAB rules (seed 002 §9.3, §14.1): when a ring needs CAB, and its approvals.

Called by the rollout code before it publishes into a ring, and by the approvals API
(``controlplane.api.approvals``), which is where a CAB approver decides.

One approval covers one deployment intent at one ring. The ring is kept in the approval's
``reason``, which always starts ``ring N (name): `` (``ring_reason`` writes it,
``approval_ring`` reads it back), so no column was added and a person reading the reason
sees which ring it is about. Pending requests lapse after ``REQUEST_TTL``; approvals stop
counting at their ``expires_at``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from controlplane.errors import NotFoundError
from controlplane.events import append_event
from controlplane.models import new_id, utcnow
from controlplane.models_release import Approval, DeploymentIntent, RiskAssessment
from controlplane.release import RINGS

CAB_ROLE: Final = "cab_approver"
"""The role an intent's CAB approval needs (seed 002 §5.5)."""

REQUEST_TTL: Final = timedelta(days=30)
"""A pending request nobody decided lapses after this (approval timeouts cap at 30 days)."""

DEFAULT_APPROVAL_TTL: Final = timedelta(days=14)
"""How long an approval counts when the approver names no expiry."""

MAX_APPROVAL_TTL: Final = timedelta(days=30)
"""The longest an approval may count, from the moment it is given."""

_RING_PREFIX = re.compile(r"^ring (\d+) \(")


def cab_requirement(
    score: float | None, privileged: bool, ring: int, threshold: float
) -> tuple[bool, str]:
    """Whether publishing into ``ring`` needs CAB approval, and why (seed 002 §9.3).

    Ring 0 (lab) never does. Privileged tooling does from ring 1 whatever its score. Otherwise
    a score above the threshold, or no assessment at all (fail closed), needs CAB from ring 2;
    a score equal to the threshold does not.

    Args:
        score: The version's latest risk score; None when it was never assessed.
        privileged: Whether the application is privileged tooling.
        ring: The ring to publish into (0 lab … 4 global).
        threshold: The CAB gate (``settings.cab_risk_threshold``).

    Returns:
        (required, a sentence saying why).

    Raises:
        ValueError: ``ring`` is not 0..4.
    """
    if ring not in RINGS:
        raise ValueError(f"ring {ring} is not one of {sorted(RINGS)}")
    where = f"ring {ring} ({RINGS[ring]})"
    if ring == 0:
        return False, f"{where} never needs CAB approval"
    if privileged:
        return True, (f"privileged tooling needs CAB approval for {where}, whatever its risk score")
    if ring == 1:
        return False, (
            f"{where} needs no CAB approval for tooling that is not privileged; "
            "the risk gate applies from ring 2"
        )
    if score is None:
        return True, f"no risk assessment on record, so {where} needs CAB approval (fail closed)"
    if score > threshold:
        return True, (
            f"risk score {score:g} is above the CAB threshold {threshold:g}, "
            f"so {where} needs CAB approval"
        )
    return False, (
        f"risk score {score:g} is at or below the CAB threshold {threshold:g}, "
        f"so {where} needs no CAB approval"
    )


def ring_reason(ring: int, reason: str) -> str:
    """An approval reason carrying its ring, as ``approval_ring`` reads it back."""
    return f"ring {ring} ({RINGS[ring]}): {reason}"[:500]


def approval_ring(approval: Approval) -> int | None:
    """The ring an intent approval is for; None for approvals of anything else."""
    found = _RING_PREFIX.match(approval.reason) if approval.subject_type == "intent" else None
    return int(found.group(1)) if found else None


async def latest_assessment(
    session: AsyncSession, tenant_id: str, version_id: str
) -> RiskAssessment | None:
    """The newest risk assessment of a version in a tenant, if any."""
    return (
        await session.execute(
            select(RiskAssessment)
            .where(RiskAssessment.tenant_id == tenant_id, RiskAssessment.version_id == version_id)
            .order_by(RiskAssessment.created_at.desc(), RiskAssessment.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def request_cab(
    session: AsyncSession,
    tenant_id: str,
    *,
    intent_id: str,
    ring: int,
    reason: str,
    requested_by: str,
    correlation_id: str,
) -> Approval:
    """The intent's CAB request for ``ring``: the one already open or in force, else a new one.

    A pending request that has lapsed is marked expired and replaced; a denied one is
    replaced too (asking again is a new request). Runs inside the caller's write transaction
    and appends ``approval_requested`` there when it creates a request.

    Args:
        session: The caller's session, in a write transaction the caller commits.
        tenant_id: The intent's tenant.
        intent_id: The deployment intent to approve.
        ring: The ring it is to be published into (1..4).
        reason: Why CAB is needed (``cab_requirement``'s sentence); the ring is prefixed.
        requested_by: The requesting principal's name (``Caller.name``); a ``" (via …)"``
            suffix from ``Caller.actor`` is dropped, so separation of duties compares names.
        correlation_id: The request id, for the event.

    Returns:
        The pending or approved-and-unexpired approval.

    Raises:
        NotFoundError: No such intent in the tenant.
        ValueError: ``ring`` is not 1..4.
    """
    if ring not in RINGS or ring == 0:
        raise ValueError(f"ring {ring} cannot need CAB approval")
    # FOR UPDATE on the intent serializes concurrent requests for it on PostgreSQL, so two
    # promotions cannot open two requests; SQLite writers are serialized already.
    intent = (
        await session.execute(
            select(DeploymentIntent)
            .where(DeploymentIntent.id == intent_id, DeploymentIntent.tenant_id == tenant_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if intent is None:
        raise NotFoundError(f"no deployment intent {intent_id!r}", field="intent_id")
    now = utcnow()
    rows = (
        (
            await session.execute(
                _for_ring(tenant_id, intent_id, ring)
                .where(Approval.decision.in_(("pending", "approved")))
                .order_by(Approval.created_at.desc())
            )
        )
        .scalars()
        .all()
    )
    for row in rows:
        if row.expires_at is None or row.expires_at > now:
            return row
    for row in rows:
        if row.decision == "pending":
            await expire(session, row, correlation_id=correlation_id)
    requester = requested_by.split(" (via ", 1)[0]
    approval = Approval(
        id=new_id("apr"),
        tenant_id=tenant_id,
        subject_type="intent",
        subject_id=intent_id,
        required_role=CAB_ROLE,
        reason=ring_reason(ring, reason),
        requested_by=requester,
        decision="pending",
        conditions=[],
        comment="",
        expires_at=now + REQUEST_TTL,
        created_at=now,
    )
    session.add(approval)
    await append_event(
        session,
        tenant_id=tenant_id,
        type="approval_requested",
        action="approval.request",
        outcome="pending",
        actor=requested_by,
        correlation_id=correlation_id,
        scope_id=intent.target_scope_id,
        data={
            "approval_id": approval.id,
            "subject_type": "intent",
            "subject_id": intent_id,
            "ring": ring,
            "required_role": CAB_ROLE,
            "reason": approval.reason,
            "expires_at": approval.expires_at.isoformat() if approval.expires_at else None,
        },
    )
    return approval


async def cab_approved(
    session: AsyncSession, tenant_id: str, *, intent_id: str, ring: int, now: datetime
) -> Approval | None:
    """The approval in force for publishing the intent into ``ring`` at ``now``, if any.

    Args:
        session: Any session of the tenant's database.
        tenant_id: The intent's tenant.
        intent_id: The deployment intent.
        ring: The ring to publish into; an approval for another ring does not count.
        now: The moment to judge expiry at (timezone-aware).

    Returns:
        The most recently decided approved, unexpired approval, or None.
    """
    return (
        await session.execute(
            _for_ring(tenant_id, intent_id, ring)
            .where(
                Approval.decision == "approved",
                or_(Approval.expires_at.is_(None), Approval.expires_at > now),
            )
            .order_by(Approval.decided_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def expire(session: AsyncSession, approval: Approval, *, correlation_id: str) -> bool:
    """Mark a lapsed pending request expired, with its event; False if it was no longer pending.

    One conditional UPDATE, so a decision racing the expiry keeps whichever came first.
    """
    moved = (
        await session.execute(
            update(Approval)
            .where(Approval.id == approval.id, Approval.decision == "pending")
            .values(decision="expired")
            .returning(Approval.id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if moved is None:
        return False
    # Already written by the UPDATE; set without marking the row dirty again.
    set_committed_value(approval, "decision", "expired")
    await append_event(
        session,
        tenant_id=approval.tenant_id,
        type="approval_decided",
        action="approval.expire",
        outcome="expired",
        actor="control-plane",
        correlation_id=correlation_id,
        data={
            "approval_id": approval.id,
            "subject_type": approval.subject_type,
            "subject_id": approval.subject_id,
            "ring": approval_ring(approval),
            "decision": "expired",
            "requested_by": approval.requested_by,
        },
    )
    return True


def _for_ring(tenant_id: str, intent_id: str, ring: int) -> Select[Approval]:
    return select(Approval).where(
        Approval.tenant_id == tenant_id,
        Approval.subject_type == "intent",
        Approval.subject_id == intent_id,
        Approval.reason.startswith(f"ring {ring} (", autoescape=True),
    )
