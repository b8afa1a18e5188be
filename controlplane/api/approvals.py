"""Control plane API: CAB approvals and what is pending for a principal.

The CAB rules are ``controlplane.cab``; risk assessments are served by ``api/risk.py``.
Deciding follows separation of duties (seed 002 §14.1): the requester never decides their own
request (GitHub "prevent self-review", Azure DevOps "requester cannot approve"), the decider
holds the approval's required role, and an approval counts for at most 30 days. Behind a
gateway (``X-Act-As``) the acting principal is the one judged. Every route is confined to the
caller's tenant; intent approvals also to the caller's scope subtree.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_validator
from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, permits, require, within
from controlplane.cab import (
    DEFAULT_APPROVAL_TTL,
    MAX_APPROVAL_TTL,
    approval_ring,
    expire,
)
from controlplane.catalog import pending_exceptions_for
from controlplane.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnprocessableError,
)
from controlplane.events import append_event
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, encode_cursor
from controlplane.models import Scope, utcnow
from controlplane.models_release import (
    Application,
    Approval,
    AppVersion,
    DeploymentIntent,
    RiskAssessment,
)
from controlplane.release import RINGS

log = logging.getLogger(__name__)
api = Api()

MAX_PENDING: Final = 200
"""Most items ``GET /approvals/pending`` returns (oldest first); ``truncated`` says if more."""
EXCEPTION_DECISION_PATH: Final = "/api/v1/exceptions/{id}/decision"
"""Where an exception is decided (``controlplane.api.evidence``)."""
SELF_APPROVAL: Final = "requester cannot approve their own request"


class ApprovalOut(BaseModel):
    id: str
    subject_type: str
    """``intent`` or ``exception``."""
    subject_id: str
    ring: int | None
    """The ring an intent approval is for."""
    required_role: str
    reason: str
    requested_by: str
    decision: str
    """pending, approved, denied or expired (a lapsed pending request reads as expired)."""
    in_force: bool
    """Approved and not yet expired."""
    approver: str | None
    conditions: list[str]
    comment: str
    expires_at: datetime | None
    decided_at: datetime | None
    created_at: datetime


class ApprovalList(BaseModel):
    items: list[ApprovalOut]
    next_cursor: str | None


class ApprovalQuery(Page):
    decision: Literal["pending", "approved", "denied", "expired"] | None = None
    """Only approvals in this state."""
    subject_type: Literal["intent", "exception"] | None = None
    """Only approvals of this kind of subject."""


class DecideHow(BaseModel):
    method: str
    path: str
    body: dict[str, Any]
    """An example body."""


class PendingItem(BaseModel):
    kind: Literal["cab_approval", "exception"]
    id: str
    """The approval's id (``cab_approval``) or the exception's (``exception``)."""
    summary: str
    """What it is, as a sentence."""
    subject_type: str
    subject_id: str
    version_id: str
    ring: int | None
    requested_by: str
    reason: str
    risk_score: float | None
    """The version's latest risk score; None when it was never assessed."""
    requested_at: datetime
    expires_at: datetime | None
    decide: DecideHow
    """How to decide it."""


class PendingList(BaseModel):
    principal: str
    """Whom the list is for (the acting principal behind a gateway)."""
    items: list[PendingItem]
    truncated: bool
    """More CAB requests are waiting than ``items`` holds."""


class DecisionIn(Strict):
    decision: Literal["approve", "deny"]
    conditions: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=20
    )
    """Conditions the approval carries (tighter ring limits, extra monitoring, …)."""
    comment: str = Field(default="", max_length=2000)
    expires_at: AwareDatetime | None = None
    """When an approval stops counting: at most 30 days out, 14 days when omitted."""

    @field_validator("expires_at")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        try:
            return None if value is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None


def _approval_out(row: Approval, now: datetime) -> ApprovalOut:
    lapsed = row.expires_at is not None and row.expires_at <= now
    decision = "expired" if row.decision == "pending" and lapsed else row.decision
    return ApprovalOut(
        id=row.id,
        subject_type=row.subject_type,
        subject_id=row.subject_id,
        ring=approval_ring(row),
        required_role=row.required_role,
        reason=row.reason,
        requested_by=row.requested_by,
        decision=decision,
        in_force=row.decision == "approved" and not lapsed,
        approver=row.approver,
        conditions=list(row.conditions),
        comment=row.comment,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
        created_at=row.created_at,
    )


def _visible(caller: Caller) -> Select[Approval]:
    """Approvals of the caller's tenant, intent approvals only inside the caller's subtree."""
    return (
        select(Approval)
        .outerjoin(
            DeploymentIntent,
            and_(
                Approval.subject_type == "intent",
                DeploymentIntent.id == Approval.subject_id,
                DeploymentIntent.tenant_id == Approval.tenant_id,
            ),
        )
        .outerjoin(Scope, Scope.id == DeploymentIntent.target_scope_id)
        .where(
            Approval.tenant_id == caller.tenant_id,
            or_(Scope.path.is_(None), Scope.path.startswith(caller.scope_path, autoescape=True)),
        )
    )


def _unexpired(now: datetime) -> Any:
    return or_(Approval.expires_at.is_(None), Approval.expires_at > now)


def _page_key(row: Approval) -> str:
    return f"{row.created_at.isoformat()}|{row.id}"


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    moment, _, approval_id = value.partition("|")
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or not approval_id:
        raise BadRequestError("cursor is not one this service issued", field="cursor")
    return when, approval_id


@api.route(
    "GET",
    "/approvals",
    summary="Approvals, newest first",
    permission="approval.read",
    tag="approvals",
    query=ApprovalQuery,
    response=ApprovalList,
)
async def list_approvals(req: ApiRequest) -> ApprovalList:
    q = req.query
    assert isinstance(q, ApprovalQuery)
    after = _after(q.cursor)
    now = utcnow()
    stmt = _visible(req.me)
    if q.subject_type is not None:
        stmt = stmt.where(Approval.subject_type == q.subject_type)
    if q.decision == "pending":
        stmt = stmt.where(Approval.decision == "pending", _unexpired(now))
    elif q.decision == "expired":
        stmt = stmt.where(
            or_(
                Approval.decision == "expired",
                and_(Approval.decision == "pending", Approval.expires_at <= now),
            )
        )
    elif q.decision is not None:
        stmt = stmt.where(Approval.decision == q.decision)
    if after is not None:
        when, approval_id = after
        stmt = stmt.where(
            or_(
                Approval.created_at < when,
                and_(Approval.created_at == when, Approval.id < approval_id),
            )
        )
    stmt = stmt.order_by(Approval.created_at.desc(), Approval.id.desc()).limit(q.limit + 1)
    async with req.state.sessions() as session:
        rows = list((await session.execute(stmt)).scalars())
    cursor = encode_cursor(_page_key(rows[q.limit - 1])) if len(rows) > q.limit else None
    return ApprovalList(items=[_approval_out(r, now) for r in rows[: q.limit]], next_cursor=cursor)


@api.route(
    "GET",
    "/approvals/pending",
    summary="What the caller may decide now: CAB requests and risk exceptions",
    permission="approval.read",
    tag="approvals",
    response=PendingList,
)
async def pending_for_me(req: ApiRequest) -> PendingList:
    me = req.me
    now = utcnow()
    async with req.state.sessions() as session:
        items, truncated = await _pending_cab(session, me, now)
        items.extend(await _pending_exceptions(session, me))
    return PendingList(principal=me.name, items=items, truncated=truncated)


async def _pending_cab(
    session: AsyncSession, me: Caller, now: datetime
) -> tuple[list[PendingItem], bool]:
    if not permits(me, "approval.decide").allowed:
        return [], False
    rows = (
        await session.execute(
            select(Approval, DeploymentIntent, Application.name, AppVersion.version, Scope.name)
            .join(
                DeploymentIntent,
                and_(
                    DeploymentIntent.id == Approval.subject_id,
                    DeploymentIntent.tenant_id == Approval.tenant_id,
                ),
            )
            .join(Application, Application.id == DeploymentIntent.application_id)
            .join(AppVersion, AppVersion.id == DeploymentIntent.version_id)
            .join(Scope, Scope.id == DeploymentIntent.target_scope_id)
            .where(
                Approval.tenant_id == me.tenant_id,
                Approval.subject_type == "intent",
                Approval.decision == "pending",
                _unexpired(now),
                Approval.required_role.in_(me.roles),
                # Separation of duties: neither the requester nor the intent's author.
                Approval.requested_by != me.name,
                DeploymentIntent.requested_by != me.name,
                Scope.path.startswith(me.scope_path, autoescape=True),
            )
            .order_by(Approval.created_at, Approval.id)
            .limit(MAX_PENDING + 1)
        )
    ).all()
    truncated = len(rows) > MAX_PENDING
    rows = rows[:MAX_PENDING]
    scores = await _scores(session, me.tenant_id, {intent.version_id for _, intent, *_ in rows})
    items = []
    for approval, intent, app_name, version, scope_name in rows:
        ring = approval_ring(approval)
        where = f"ring {ring} ({RINGS[ring]})" if ring is not None else "a ring"
        items.append(
            PendingItem(
                kind="cab_approval",
                id=approval.id,
                summary=(
                    f"CAB approval to publish {app_name} {version} into {where} "
                    f"of scope {scope_name}"
                ),
                subject_type="intent",
                subject_id=intent.id,
                version_id=intent.version_id,
                ring=ring,
                requested_by=approval.requested_by,
                reason=approval.reason,
                risk_score=scores.get(intent.version_id),
                requested_at=approval.created_at,
                expires_at=approval.expires_at,
                decide=DecideHow(
                    method="POST",
                    path=f"/api/v1/approvals/{approval.id}/decision",
                    body={
                        "decision": "approve or deny",
                        "conditions": [],
                        "comment": "",
                        "expires_at": "optional; at most 30 days out, 14 days by default",
                    },
                ),
            )
        )
    return items, truncated


async def _pending_exceptions(session: AsyncSession, me: Caller) -> list[PendingItem]:
    found = await pending_exceptions_for(session, me.tenant_id, me.name, me.roles)
    if not found:
        return []
    version_ids = {e.version_id for e in found}
    names = {
        version_id: f"{app} {version}"
        for version_id, app, version in (
            await session.execute(
                select(AppVersion.id, Application.name, AppVersion.version)
                .join(Application, Application.id == AppVersion.application_id)
                .where(AppVersion.tenant_id == me.tenant_id, AppVersion.id.in_(version_ids))
            )
        ).all()
    }
    scores = await _scores(session, me.tenant_id, version_ids)
    return [
        PendingItem(
            kind="exception",
            id=e.id,
            summary=(
                f"Risk exception ({e.kind}) for {names.get(e.version_id, e.version_id)}, "
                f"owned by {e.owner}, until {e.expires_at.date().isoformat()}"
            ),
            subject_type="exception",
            subject_id=e.id,
            version_id=e.version_id,
            ring=None,
            requested_by=e.requested_by,
            reason=e.reason,
            risk_score=scores.get(e.version_id),
            requested_at=e.created_at,
            expires_at=e.expires_at,
            decide=DecideHow(
                method="POST",
                path=EXCEPTION_DECISION_PATH.format(id=e.id),
                body={"decision": "approve or deny", "comment": ""},
            ),
        )
        for e in found
    ]


async def _scores(session: AsyncSession, tenant_id: str, version_ids: set[str]) -> dict[str, float]:
    """Each version's latest risk score (versions never assessed are absent)."""
    if not version_ids:
        return {}
    rows = (
        await session.execute(
            select(RiskAssessment.version_id, RiskAssessment.score)
            .where(
                RiskAssessment.tenant_id == tenant_id,
                RiskAssessment.version_id.in_(version_ids),
            )
            .order_by(RiskAssessment.created_at, RiskAssessment.id)
        )
    ).all()
    # Oldest first, so each version's newest score is the one left standing.
    return {version_id: score for version_id, score in rows}


@api.route(
    "GET",
    "/approvals/{approval_id}",
    summary="One approval",
    permission="approval.read",
    tag="approvals",
    response=ApprovalOut,
)
async def get_approval(req: ApiRequest) -> ApprovalOut:
    async with req.state.sessions() as session:
        row = (
            await session.execute(_visible(req.me).where(Approval.id == req.path("approval_id")))
        ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no approval {req.path('approval_id')!r}", field="approval_id")
    return _approval_out(row, utcnow())


@api.route(
    "POST",
    "/approvals/{approval_id}/decision",
    summary="Approve or deny a request (never your own)",
    permission="approval.decide",
    tag="approvals",
    body=DecisionIn,
    response=ApprovalOut,
)
async def decide_approval(req: ApiRequest) -> ApprovalOut:
    body = req.body
    assert isinstance(body, DecisionIn)
    me, now = req.me, utcnow()
    expires_at = _approval_expiry(body, now)
    lapsed: datetime | None = None
    out: ApprovalOut | None = None
    async with req.state.writing() as session:
        row = await session.get(Approval, req.path("approval_id"))
        if row is None or row.tenant_id != me.tenant_id:
            raise NotFoundError(f"no approval {req.path('approval_id')!r}", field="approval_id")
        intent = await _check_decider(session, me, row)
        if row.decision != "pending":
            raise ConflictError(
                f"this request was already {row.decision}"
                + (f" by {row.approver}" if row.approver else "")
                + (f" at {row.decided_at.isoformat()}" if row.decided_at else ""),
                details={"decision": row.decision},
            )
        if row.expires_at is not None and row.expires_at <= now:
            # Recorded, then refused once the transaction has committed.
            await expire(session, row, correlation_id=req.correlation_id)
            lapsed = row.expires_at
        else:
            await _record(session, req, row, intent, body, expires_at, now)
            out = _approval_out(row, now)
    if out is None:
        assert lapsed is not None
        raise ConflictError(
            f"this request expired at {lapsed.isoformat()} and can no longer be decided; "
            "ask for CAB approval again",
            details={"decision": "expired"},
        )
    return out


def _approval_expiry(body: DecisionIn, now: datetime) -> datetime | None:
    if body.decision == "deny":
        if body.expires_at is not None:
            raise UnprocessableError("only an approval expires", field="expires_at")
        return None
    if body.expires_at is None:
        return now + DEFAULT_APPROVAL_TTL
    if body.expires_at <= now:
        raise UnprocessableError("expires_at must be in the future", field="expires_at")
    if body.expires_at > now + MAX_APPROVAL_TTL:
        raise UnprocessableError(
            f"an approval counts for at most {MAX_APPROVAL_TTL.days} days", field="expires_at"
        )
    return body.expires_at


async def _check_decider(
    session: AsyncSession, me: Caller, row: Approval
) -> DeploymentIntent | None:
    """Refuse (403) a decider without the role, the requester, or one outside the scope."""
    if row.required_role not in me.roles:
        raise ForbiddenError(
            f"deciding this request needs the {row.required_role} role",
            details={"rule": f"approval:role:{row.required_role}"},
        )
    if row.requested_by == me.name:
        raise ForbiddenError(SELF_APPROVAL, details={"rule": "sod:requester"})
    if row.subject_type != "intent":
        return None
    found = (
        await session.execute(
            select(DeploymentIntent, Scope.path)
            .join(Scope, Scope.id == DeploymentIntent.target_scope_id)
            .where(
                DeploymentIntent.id == row.subject_id,
                DeploymentIntent.tenant_id == me.tenant_id,
            )
        )
    ).first()
    if found is None:
        return None
    intent, path = found
    if intent.requested_by == me.name:
        raise ForbiddenError(
            f"{SELF_APPROVAL} (you requested the deployment intent)",
            details={"rule": "sod:requester"},
        )
    require(within(me, path))
    return intent


async def _record(
    session: AsyncSession,
    req: ApiRequest,
    row: Approval,
    intent: DeploymentIntent | None,
    body: DecisionIn,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    me = req.me
    decision = "approved" if body.decision == "approve" else "denied"
    # Conditional on still pending: of two deciders racing, exactly one wins.
    moved = (
        await session.execute(
            update(Approval)
            .where(Approval.id == row.id, Approval.decision == "pending")
            .values(
                decision=decision,
                approver=me.name,
                conditions=list(body.conditions),
                comment=body.comment,
                expires_at=expires_at,
                decided_at=now,
            )
            .returning(Approval.id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if moved is None:
        raise ConflictError("this request was decided by someone else just now")
    await session.refresh(row)
    await append_event(
        session,
        tenant_id=me.tenant_id,
        type="approval_decided",
        action="approval.decide",
        outcome=decision,
        actor=me.actor,
        correlation_id=req.correlation_id,
        scope_id=intent.target_scope_id if intent is not None else None,
        data={
            "approval_id": row.id,
            "subject_type": row.subject_type,
            "subject_id": row.subject_id,
            "ring": approval_ring(row),
            "decision": decision,
            "conditions": list(body.conditions),
            "comment": body.comment,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "requested_by": row.requested_by,
        },
    )
    log.info(
        "approval decided",
        extra={"approval_id": row.id, "decision": decision, "approver": me.name},
    )
