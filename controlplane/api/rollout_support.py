"""Control plane API, rollouts: models and helpers shared by the intent and verb modules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, Decision, require, within
from controlplane.errors import ConflictError, ForbiddenError, NotFoundError, UnprocessableError
from controlplane.events import NewEvent, append_events
from controlplane.gating import (
    Assessment,
)
from controlplane.http import ApiRequest, Page, Strict
from controlplane.models import Scope
from controlplane.models_release import (
    Application,
    DeploymentIntent,
    RiskException,
    Rollout,
)
from controlplane.release import IN_FLIGHT, RINGS
from controlplane.rollouts import (
    LAST_RING,
    ring_label,
)

Id = Field(min_length=1, max_length=40)
StatusName = Literal["Healthy", "Progressing", "Paused", "Degraded"]


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range") from None


class Window(Strict):
    start: AwareDatetime
    """When the window opens (with a zone)."""
    end: AwareDatetime
    """When it closes; after ``start``."""

    @field_validator("start", "end")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError("a window must end after it starts")
        return self


class Schedule(Strict):
    start_at: AwareDatetime | None = None
    """No promotion before this time."""
    windows: list[Window] = Field(default_factory=list, max_length=50)
    """Promotions only inside one of these; none means any time."""

    @field_validator("start_at")
    @classmethod
    def _start_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)


class Constraints(Strict):
    max_devices: int | None = Field(default=None, ge=1, le=10_000_000)
    """Most devices the execution plane may assign in any ring."""
    exclude_scope_ids: list[str] = Field(default_factory=list, max_length=50)
    """Scopes inside the target that must not receive the version."""
    simulate_success_rate: float | None = Field(default=None, ge=0, le=1)
    """Fleet simulator only: the share of this intent's installs that succeed."""


class IntentCreate(Strict):
    client_key: str = Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")
    """Idempotency key: the same key with the same request returns the same intent."""
    version_id: str = Id
    """The application version to deploy."""
    target_scope_id: str = Id
    """Mandatory scope declaration: where the version goes (seed 002 §5.4.1)."""
    ring: int = Field(default=0, ge=0, le=LAST_RING)
    """Ring to start in (0 lab … 4 global), usually 0."""
    schedule: Schedule = Field(default_factory=Schedule)
    constraints: Constraints = Field(default_factory=Constraints)
    notes: str = Field(default="", max_length=4000)
    """Rollout notes; free text, data, never instructions."""


class IntentOut(BaseModel):
    id: str
    client_key: str
    request_digest: str
    """sha256 of the canonical request."""
    application_id: str
    version_id: str
    target_scope_id: str
    ring: int
    """The ring the intent is in now."""
    schedule: dict[str, Any]
    constraints: dict[str, Any]
    state: str
    """active, paused, completed or rolled_back."""
    evidence_digest: str | None
    """Evidence pack the intent last entered a ring with."""
    notes: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    rollout_id: str


class GateOut(BaseModel):
    name: str
    kind: Literal["health", "readiness"]
    """health gates judge the current ring (a failure pauses); readiness gates the next."""
    verdict: Literal["passed", "failed", "inconclusive"]
    measured: float | int | str | bool | None
    threshold: float | int | str | bool | None
    reason: str
    detail: dict[str, Any]


class RolloutOut(BaseModel):
    id: str
    intent_id: str
    application_id: str
    version_id: str
    target_scope_id: str
    ring: int
    ring_name: str
    status: StatusName
    intent_state: str
    paused_reason: str | None
    ring_started_at: datetime
    updated_at: datetime
    gates: list[GateOut]
    """Every gate with its measured value, threshold and verdict."""
    gates_ring: int | None
    """The ring the gates were measured in."""
    gates_evaluated_at: datetime | None
    gates_live: bool
    """True when measured for this response; False for the last recorded evaluation."""
    history: list[dict[str, Any]]
    """Creation, promotions, pauses, resumes and rollbacks, with actor and time."""


class RolloutList(BaseModel):
    items: list[RolloutOut]
    next_cursor: str | None


class AppRolloutQuery(Page):
    status: StatusName | None = None
    """Only rollouts in this phase."""


class RolloutQuery(AppRolloutQuery):
    app_id: str | None = Field(default=None, max_length=40)
    """Only rollouts of this application."""


class PromoteIn(Strict):
    from_ring: int | None = Field(default=None, ge=0, le=LAST_RING)
    """Promote only if the rollout is still in this ring (makes a retried promote safe)."""


class ReasonIn(Strict):
    reason: str = Field(min_length=1, max_length=500)
    """Why; recorded in the rollout's history and the event."""


class ResumeIn(Strict):
    reason: str = Field(default="", max_length=500)


# -- access ---------------------------------------------------------------------------------


def overlaps(caller: Caller, scope_path: str) -> Decision:
    """Whether a scope's subtree and the caller's intersect (what reading a rollout needs)."""
    if scope_path.startswith(caller.scope_path) or caller.scope_path.startswith(scope_path):
        return Decision(True, "the scope overlaps the caller's subtree", "scope:overlap")
    return Decision(
        False, "the rollout targets a scope outside the caller's subtree", "default:deny"
    )


def _boundary(rule: str, reason: str, **details: Any) -> ForbiddenError:
    return ForbiddenError(
        f"cross-boundary targeting is denied by default: {reason}",
        field="target_scope_id",
        details={"rule": rule, **details},
    )


async def scope_for(session: AsyncSession, caller: Caller, scope_id: str, field: str) -> Scope:
    scope = await session.get(Scope, scope_id)
    if scope is None or scope.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no scope {scope_id!r}", field=field)
    return scope


def publisher_boundary(caller: Caller, target: Scope) -> None:
    """``target ⊆ publisher scope`` (seed 002 §5.4.1)."""
    if not within(caller, target.path).allowed:
        raise _boundary(
            "boundary:publisher",
            f"target scope {target.id} is outside your scope subtree ({caller.scope_id})",
            publisher_scope_id=caller.scope_id,
        )


async def application_boundary(
    session: AsyncSession, caller: Caller, target: Scope, app: Application
) -> None:
    """``target ⊆ app scope``: inside one of the application's allowed scopes."""
    allowed = (
        await session.execute(
            select(Scope.path).where(
                Scope.tenant_id == caller.tenant_id, Scope.id.in_(app.allowed_scope_ids)
            )
        )
    ).scalars()
    if not any(target.path.startswith(path) for path in allowed):
        raise _boundary(
            "boundary:application",
            f"target scope {target.id} is outside the application's allowed scopes "
            f"{app.allowed_scope_ids}",
            allowed_scope_ids=app.allowed_scope_ids,
        )


async def check_exclusions(
    session: AsyncSession, caller: Caller, target: Scope, scope_ids: list[str]
) -> None:
    if len(set(scope_ids)) != len(scope_ids):
        raise UnprocessableError(
            "exclude_scope_ids repeats a scope", field="constraints.exclude_scope_ids"
        )
    for scope_id in scope_ids:
        scope = await scope_for(session, caller, scope_id, "constraints.exclude_scope_ids")
        if scope.id == target.id or not scope.path.startswith(target.path):
            raise UnprocessableError(
                f"excluded scope {scope_id} is not inside the target scope {target.id}",
                field="constraints.exclude_scope_ids",
            )


async def load_rollout(
    session: AsyncSession, caller: Caller, rollout_id: str, *, operate: bool, lock: bool = False
) -> tuple[Rollout, DeploymentIntent]:
    """A rollout and its intent in the caller's tenant; operating needs the target inside the
    caller's subtree, reading only an overlap."""
    stmt = (
        select(Rollout, DeploymentIntent, Scope.path)
        .join(DeploymentIntent, DeploymentIntent.id == Rollout.intent_id)
        .join(Scope, Scope.id == DeploymentIntent.target_scope_id)
        .where(Rollout.id == rollout_id, Rollout.tenant_id == caller.tenant_id)
    )
    if lock:
        stmt = stmt.with_for_update(of=[Rollout, DeploymentIntent])
    row = (await session.execute(stmt)).first()
    if row is None:
        raise NotFoundError(f"no rollout {rollout_id!r}", field="rollout_id")
    rollout, intent, path = row
    require(within(caller, path) if operate else overlaps(caller, path))
    return rollout, intent


async def lock_application(session: AsyncSession, application_id: str) -> None:
    # Serializes intent creation and promotion per application on PostgreSQL, so two requests
    # cannot both find a ring free; SQLite writers are serialized already.
    await session.execute(
        select(Application.id).where(Application.id == application_id).with_for_update()
    )


async def in_flight_intent(
    session: AsyncSession, tenant_id: str, application_id: str, ring: int, other_than: str = ""
) -> str | None:
    return (
        await session.execute(
            select(DeploymentIntent.id)
            .where(
                DeploymentIntent.tenant_id == tenant_id,
                DeploymentIntent.application_id == application_id,
                DeploymentIntent.ring == ring,
                DeploymentIntent.state.in_(IN_FLIGHT),
                DeploymentIntent.id != other_than,
            )
            .limit(1)
        )
    ).scalar_one_or_none()


def one_change_conflict(intent_id: str, ring: int) -> ConflictError:
    return ConflictError(
        f"{ring_label(ring)} of this application already has an active change: intent "
        f"{intent_id}; one change per application and ring (pause is still in flight)",
        details={"intent_id": intent_id, "ring": ring},
    )


async def link_exception(session: AsyncSession, exception_id: str | None, intent_id: str) -> None:
    """Record which intent relied on a risk exception (seed 002 §9.5 audit linkage)."""
    if exception_id is None:
        return
    await session.execute(
        update(RiskException)
        .where(RiskException.id == exception_id, RiskException.intent_id.is_(None))
        .values(intent_id=intent_id)
        .execution_options(synchronize_session=False)
    )


# -- gates ----------------------------------------------------------------------------------


def intent_out(intent: DeploymentIntent, rollout_id: str) -> IntentOut:
    return IntentOut.model_validate({**_columns(intent), "rollout_id": rollout_id})


def _columns(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def rollout_out(
    rollout: Rollout,
    intent: DeploymentIntent,
    live: Assessment | None = None,
    now: datetime | None = None,
) -> RolloutOut:
    """A rollout with its live gates when given, else the last recorded ones."""
    recorded = rollout.last_gates
    first = recorded[0] if recorded else {}
    return RolloutOut.model_validate(
        {
            **_columns(rollout),
            "application_id": intent.application_id,
            "version_id": intent.version_id,
            "target_scope_id": intent.target_scope_id,
            "ring_name": RINGS[rollout.ring],
            "intent_state": intent.state,
            "gates": [g.as_dict() for g in live.gates] if live else recorded,
            "gates_ring": live.ring if live else first.get("ring"),
            "gates_evaluated_at": now if live else first.get("evaluated_at"),
            "gates_live": live is not None,
        }
    )


def record_history(
    rollout: Rollout, me: Caller, action: str, now: datetime, **extra: Any
) -> dict[str, Any]:
    entry = {"at": now.isoformat(), "actor": me.actor, "action": action, "ring": rollout.ring}
    entry.update(extra)
    rollout.history = [*rollout.history, entry]
    rollout.updated_at = now
    return entry


def make_event(
    req: ApiRequest, intent: DeploymentIntent, type: str, action: str, outcome: str, **data: Any
) -> NewEvent:
    return NewEvent(
        type=type,
        action=action,
        outcome=outcome,
        actor=req.me.actor,
        correlation_id=req.correlation_id,
        scope_id=intent.target_scope_id,
        data={
            "intent_id": intent.id,
            "application_id": intent.application_id,
            "version_id": intent.version_id,
            **data,
        },
    )


async def emit(
    session: AsyncSession,
    req: ApiRequest,
    intent: DeploymentIntent,
    type: str,
    action: str,
    outcome: str,
    **data: Any,
) -> None:
    await append_events(
        session, intent.tenant_id, [make_event(req, intent, type, action, outcome, **data)]
    )


# -- intents --------------------------------------------------------------------------------
