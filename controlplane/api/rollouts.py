"""Control plane API: deployment intents, their rollouts and ring verbs (seed 002 §5.4-5.6, §10).

Verbs follow Argo Rollouts (promote, pause, resume, rollback; phases Healthy, Progressing,
Paused, Degraded). The rules live in ``controlplane.rollouts``; this module gathers their
inputs (ring measurement, incidents, evidence, supply chain, risk and CAB approvals) and
enforces their outcome. A verb that must measure a ring reads in its own session first and
then writes in a short transaction that re-checks the rollout did not move meanwhile, so a
large ring's aggregate never holds SQLite's single writer.

Guardrails: a target scope must lie in the caller's subtree and in one of the application's
allowed scopes (cross-boundary targeting is denied by default); one in-flight intent per
application and ring, checked under a lock on the application row; an intent is idempotent
by its client key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, Decision, require, within
from controlplane.api.catalog import app_for
from controlplane.cab import cab_approved, cab_requirement, latest_assessment, request_cab
from controlplane.catalog import supply_chain_gate
from controlplane.errors import ConflictError, ForbiddenError, NotFoundError, UnprocessableError
from controlplane.events import NewEvent, append_events
from controlplane.evidence import evidence_status
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, json_response, paginate
from controlplane.models import Scope, new_id, utcnow
from controlplane.models_release import (
    Application,
    AppVersion,
    DeploymentIntent,
    DeviceInstall,
    RiskException,
    Rollout,
)
from controlplane.release import IN_FLIGHT, RINGS
from controlplane.rollouts import (
    LAST_RING,
    Gate,
    cab_gate,
    decide_promotion,
    evidence_gate,
    health_gates,
    measure_ring,
    min_reports,
    open_incidents,
    pausing,
    ring_label,
    rollback_gate,
    schedule_gate,
    status_for,
    success_target,
    supply_chain_result,
    version_gate,
)
from controlplane.settings import ControlPlaneSettings
from controlplane.signing import digest

api = Api()

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


async def _scope(session: AsyncSession, caller: Caller, scope_id: str, field: str) -> Scope:
    scope = await session.get(Scope, scope_id)
    if scope is None or scope.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no scope {scope_id!r}", field=field)
    return scope


def _publisher_boundary(caller: Caller, target: Scope) -> None:
    """``target ⊆ publisher scope`` (seed 002 §5.4.1)."""
    if not within(caller, target.path).allowed:
        raise _boundary(
            "boundary:publisher",
            f"target scope {target.id} is outside your scope subtree ({caller.scope_id})",
            publisher_scope_id=caller.scope_id,
        )


async def _application_boundary(
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


async def _check_exclusions(
    session: AsyncSession, caller: Caller, target: Scope, scope_ids: list[str]
) -> None:
    if len(set(scope_ids)) != len(scope_ids):
        raise UnprocessableError(
            "exclude_scope_ids repeats a scope", field="constraints.exclude_scope_ids"
        )
    for scope_id in scope_ids:
        scope = await _scope(session, caller, scope_id, "constraints.exclude_scope_ids")
        if scope.id == target.id or not scope.path.startswith(target.path):
            raise UnprocessableError(
                f"excluded scope {scope_id} is not inside the target scope {target.id}",
                field="constraints.exclude_scope_ids",
            )


async def _load(
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


async def _lock_application(session: AsyncSession, application_id: str) -> None:
    # Serializes intent creation and promotion per application on PostgreSQL, so two requests
    # cannot both find a ring free; SQLite writers are serialized already.
    await session.execute(
        select(Application.id).where(Application.id == application_id).with_for_update()
    )


async def _in_flight(
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


def _one_change(intent_id: str, ring: int) -> ConflictError:
    return ConflictError(
        f"{ring_label(ring)} of this application already has an active change: intent "
        f"{intent_id}; one change per application and ring (pause is still in flight)",
        details={"intent_id": intent_id, "ring": ring},
    )


async def _link_exception(session: AsyncSession, exception_id: str | None, intent_id: str) -> None:
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


@dataclass(frozen=True, slots=True)
class Entry:
    """Readiness for entering a ring."""

    gates: list[Gate]
    """Version state, evidence pack, supply chain (when checked) and CAB approval."""
    cab_reason: str | None
    """Why CAB approval is needed when it is and none is in force."""
    evidence_digest: str | None
    """The version's newest evidence pack, recorded on the intent when it enters the ring."""
    exception_id: str | None
    """The risk exception the supply-chain gate relied on."""


async def entry_gates(
    session: AsyncSession,
    settings: ControlPlaneSettings,
    app: Application,
    version: AppVersion,
    ring: int,
    now: datetime,
    *,
    intent_id: str | None,
    evidence: tuple[str | None, list[str]],
    supply_chain: bool,
) -> Entry:
    """The readiness gates for entering ``ring``: version state, evidence, supply chain, CAB."""
    gates = [version_gate(version.state, ring)]
    exception_id, cab_reason = None, None
    if ring >= 1:
        gates.append(evidence_gate(*evidence, ring))
        if supply_chain:
            check = await supply_chain_gate(session, app.tenant_id, version.id, now)
            gates.append(supply_chain_result(check.ok, check.reason, check.exception_id))
            exception_id = check.exception_id
        risk = await latest_assessment(session, app.tenant_id, version.id)
        required, why = cab_requirement(
            None if risk is None else risk.score,
            app.privileged,
            ring,
            settings.cab_risk_threshold,
        )
        approval = None
        if required and intent_id is not None:
            approval = await cab_approved(
                session, app.tenant_id, intent_id=intent_id, ring=ring, now=now
            )
        gates.append(cab_gate(required, why, None if approval is None else approval.id))
        if required and approval is None:
            cab_reason = why
    return Entry(gates, cab_reason, evidence[0], exception_id)


@dataclass(frozen=True, slots=True)
class Assessment:
    """Every gate for leaving the ring a rollout is in."""

    application_id: str
    """The intent's application."""
    ring: int
    """The ring measured."""
    next_ring: int | None
    """None in the last ring: leaving it completes the intent."""
    gates: list[Gate]
    """Health gates, rollback validated, then the next ring's readiness gates and schedule."""
    entry: Entry | None
    """The next ring's readiness; None in the last ring."""


async def assess(
    session: AsyncSession, settings: ControlPlaneSettings, intent: DeploymentIntent, now: datetime
) -> Assessment:
    """Measure the intent's current ring and judge whether it may move on."""
    tenant_id, ring = intent.tenant_id, intent.ring
    limits = settings.time_to_compliance
    measured = await measure_ring(session, tenant_id, intent.id, ring, now, limits)
    count, incident_ids = await open_incidents(session, tenant_id, intent.application_id)
    gates = health_gates(
        measured,
        target=success_target(settings.gate_success_rate, ring),
        min_devices=min_reports(settings.gate_min_devices, ring),
        limits=limits,
        incidents=count,
        incident_ids=incident_ids,
    )
    evidence = await evidence_status(session, tenant_id, intent.version_id)
    gates.append(rollback_gate(*evidence))
    next_ring = ring + 1 if ring < LAST_RING else None
    entry = None
    if next_ring is not None:
        app = await session.get_one(Application, intent.application_id)
        version = await session.get_one(AppVersion, intent.version_id)
        entry = await entry_gates(
            session,
            settings,
            app,
            version,
            next_ring,
            now,
            intent_id=intent.id,
            evidence=evidence,
            # seed 002 §7.1 gates publishing: checked when the version first leaves the lab.
            supply_chain=next_ring == 1,
        )
        gates += entry.gates
        gates.append(schedule_gate(intent.schedule, now))
    return Assessment(intent.application_id, ring, next_ring, gates, entry)


def _gate_docs(gates: list[Gate], ring: int, now: datetime) -> list[dict[str, Any]]:
    return [{**g.as_dict(), "ring": ring, "evaluated_at": now.isoformat()} for g in gates]


def _summary(gates: list[Gate]) -> list[dict[str, Any]]:
    return [
        {"name": g.name, "verdict": g.verdict, "measured": g.measured, "threshold": g.threshold}
        for g in gates
    ]


# -- output ---------------------------------------------------------------------------------


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


def _history(
    rollout: Rollout, me: Caller, action: str, now: datetime, **extra: Any
) -> dict[str, Any]:
    entry = {"at": now.isoformat(), "actor": me.actor, "action": action, "ring": rollout.ring}
    entry.update(extra)
    rollout.history = [*rollout.history, entry]
    rollout.updated_at = now
    return entry


def _event(
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


async def _emit(
    session: AsyncSession,
    req: ApiRequest,
    intent: DeploymentIntent,
    type: str,
    action: str,
    outcome: str,
    **data: Any,
) -> None:
    await append_events(
        session, intent.tenant_id, [_event(req, intent, type, action, outcome, **data)]
    )


# -- intents --------------------------------------------------------------------------------


@api.route(
    "POST",
    "/intents",
    summary="Declare a deployment intent (and start its rollout); idempotent by client_key",
    permission="intent.write",
    tag="rollouts",
    body=IntentCreate,
    response=IntentOut,
    status=201,
)
async def create_intent(req: ApiRequest) -> IntentOut | web.Response:
    body = req.body
    assert isinstance(body, IntentCreate)
    me, settings, now = req.me, req.state.settings, utcnow()
    request_digest = digest(body.model_dump(mode="json"))
    async with req.state.writing() as session:
        target = await _scope(session, me, body.target_scope_id, "target_scope_id")
        _publisher_boundary(me, target)
        version = await session.get(AppVersion, body.version_id)
        if version is None or version.tenant_id != me.tenant_id:
            raise NotFoundError(f"no version {body.version_id!r}", field="version_id")
        app = await session.get_one(Application, version.application_id)
        # Locked before the replay lookup, so a concurrent identical request finds this one's
        # intent (and answers 200) rather than a busy ring.
        await _lock_application(session, app.id)
        replay = await _replay(session, me, body.client_key, request_digest)
        if replay is not None:
            return json_response(replay, 200)
        await _application_boundary(session, me, target, app)
        await _check_exclusions(session, me, target, body.constraints.exclude_scope_ids)
        evidence = await evidence_status(session, me.tenant_id, version.id)
        entry = await entry_gates(
            session,
            settings,
            app,
            version,
            body.ring,
            now,
            intent_id=None,
            evidence=evidence,
            supply_chain=body.ring >= 1,
        )
        failed = [g for g in entry.gates if g.verdict == "failed"]
        if failed:
            hint = (
                "; start in a lower ring and promote, which requests the CAB approval"
                if entry.cab_reason is not None
                else ""
            )
            raise ConflictError(
                f"cannot start in {ring_label(body.ring)}: "
                + "; ".join(g.reason for g in failed)
                + hint,
                field="ring",
                details={"gates": [g.as_dict() for g in entry.gates]},
            )
        other = await _in_flight(session, me.tenant_id, app.id, body.ring)
        if other is not None:
            raise _one_change(other, body.ring)
        intent = DeploymentIntent(
            id=new_id("int"),
            tenant_id=me.tenant_id,
            client_key=body.client_key,
            request_digest=request_digest,
            application_id=app.id,
            version_id=version.id,
            target_scope_id=target.id,
            ring=body.ring,
            schedule=body.schedule.model_dump(mode="json"),
            constraints=body.constraints.model_dump(mode="json"),
            state="active",
            evidence_digest=entry.evidence_digest,
            notes=body.notes,
            requested_by=me.name,
            created_at=now,
            updated_at=now,
        )
        rollout = Rollout(
            id=new_id("ro"),
            tenant_id=me.tenant_id,
            intent_id=intent.id,
            ring=body.ring,
            status="Progressing",
            paused_reason=None,
            ring_started_at=now,
            last_gates=[],
            history=[],
            updated_at=now,
        )
        _history(rollout, me, "create", now)
        session.add(intent)
        try:
            await session.flush()
        except IntegrityError:  # the same client_key committed by a concurrent request
            raise ConflictError(
                f"client_key {body.client_key!r} was just used by another request; retry to "
                "get its intent",
                field="client_key",
            ) from None
        session.add(rollout)
        await _link_exception(session, entry.exception_id, intent.id)
        await _emit(
            session,
            req,
            intent,
            "intent_created",
            "intent.create",
            "success",
            rollout_id=rollout.id,
            ring=body.ring,
            request_digest=request_digest,
            evidence_digest=entry.evidence_digest,
            exception_id=entry.exception_id,
            gates=_summary(entry.gates),
        )
    return intent_out(intent, rollout.id)


async def _replay(
    session: AsyncSession, me: Caller, client_key: str, request_digest: str
) -> IntentOut | None:
    """The intent a repeated request already created; a key reused for another request is 409."""
    found = (
        await session.execute(
            select(DeploymentIntent, Rollout.id)
            .join(Rollout, Rollout.intent_id == DeploymentIntent.id)
            .where(
                DeploymentIntent.tenant_id == me.tenant_id,
                DeploymentIntent.client_key == client_key,
            )
        )
    ).first()
    if found is None:
        return None
    intent, rollout_id = found
    if intent.request_digest != request_digest:
        raise ConflictError(
            f"client_key {client_key!r} was already used for a different request "
            f"(intent {intent.id}); use a new key for a new intent",
            field="client_key",
            details={"intent_id": intent.id},
        )
    return intent_out(intent, rollout_id)


@api.route(
    "GET",
    "/intents/{intent_id}",
    summary="One deployment intent",
    permission="intent.read",
    tag="rollouts",
    response=IntentOut,
)
async def get_intent(req: ApiRequest) -> IntentOut:
    me = req.me
    async with req.state.sessions() as session:
        row = (
            await session.execute(
                select(DeploymentIntent, Rollout.id, Scope.path)
                .join(Rollout, Rollout.intent_id == DeploymentIntent.id)
                .join(Scope, Scope.id == DeploymentIntent.target_scope_id)
                .where(
                    DeploymentIntent.id == req.path("intent_id"),
                    DeploymentIntent.tenant_id == me.tenant_id,
                )
            )
        ).first()
    if row is None:
        raise NotFoundError(f"no intent {req.path('intent_id')!r}", field="intent_id")
    intent, rollout_id, path = row
    require(overlaps(me, path))
    return intent_out(intent, rollout_id)


# -- rollouts -------------------------------------------------------------------------------


@api.route(
    "GET",
    "/rollouts/{rollout_id}",
    summary="A rollout with every gate of its ring measured now",
    permission="rollout.read",
    tag="rollouts",
    response=RolloutOut,
)
async def get_rollout(req: ApiRequest) -> RolloutOut:
    now = utcnow()
    async with req.state.sessions() as session:
        rollout, intent = await _load(session, req.me, req.path("rollout_id"), operate=False)
        if intent.state not in IN_FLIGHT:
            return rollout_out(rollout, intent)
        live = await assess(session, req.state.settings, intent, now)
    return rollout_out(rollout, intent, live, now)


@api.route(
    "GET",
    "/rollouts",
    summary="Rollouts the caller can see, with their last recorded gates",
    permission="rollout.read",
    tag="rollouts",
    query=RolloutQuery,
    response=RolloutList,
)
async def list_rollouts(req: ApiRequest) -> RolloutList:
    query = req.query
    assert isinstance(query, RolloutQuery)
    return await _rollouts(req, query, query.app_id)


@api.route(
    "GET",
    "/apps/{app_id}/rollouts",
    summary="An application's rollouts the caller can see, with their last recorded gates",
    permission="rollout.read",
    tag="rollouts",
    query=AppRolloutQuery,
    response=RolloutList,
)
async def list_app_rollouts(req: ApiRequest) -> RolloutList:
    query = req.query
    assert isinstance(query, AppRolloutQuery)
    async with req.state.sessions() as session:
        app = await app_for(session, req.me, req.path("app_id"))
    return await _rollouts(req, query, app.id)


async def _rollouts(req: ApiRequest, query: AppRolloutQuery, app_id: str | None) -> RolloutList:
    me = req.me
    # Visible: targets inside the caller's subtree, or an ancestor of it (the caller's
    # devices are in that rollout's blast radius).
    ancestors = [p for p in me.scope_path.strip("/").split("/") if p]
    stmt = (
        select(Rollout, DeploymentIntent)
        .join(DeploymentIntent, DeploymentIntent.id == Rollout.intent_id)
        .join(Scope, Scope.id == DeploymentIntent.target_scope_id)
        .where(
            Rollout.tenant_id == me.tenant_id,
            or_(
                Scope.path.startswith(me.scope_path, autoescape=True),
                DeploymentIntent.target_scope_id.in_(ancestors),
            ),
        )
    )
    if app_id is not None:
        stmt = stmt.where(DeploymentIntent.application_id == app_id)
    if query.status is not None:
        stmt = stmt.where(Rollout.status == query.status)
    after = decode_cursor(query.cursor)
    if after is not None:
        stmt = stmt.where(Rollout.id > after)
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(Rollout.id).limit(query.limit + 1))).all()
    page, cursor = paginate(rows, query.limit, lambda r: r[0].id)
    return RolloutList(items=[rollout_out(r, i) for r, i in page], next_cursor=cursor)


def _not_in_flight(intent: DeploymentIntent, verb: str) -> ConflictError:
    return ConflictError(
        f"cannot {verb}: the intent is {intent.state}, not in flight",
        details={"intent_state": intent.state},
    )


async def _measure(req: ApiRequest, verb: str) -> tuple[Assessment, datetime]:
    """Read phase of a verb: the rollout's gates, measured outside any write transaction."""
    now = utcnow()
    async with req.state.sessions() as session:
        _, intent = await _load(session, req.me, req.path("rollout_id"), operate=True)
        if intent.state not in IN_FLIGHT:
            raise _not_in_flight(intent, verb)
        return await assess(session, req.state.settings, intent, now), now


async def _reload(
    session: AsyncSession, req: ApiRequest, measured: Assessment, verb: str
) -> tuple[Rollout, DeploymentIntent]:
    """Write phase: the rollout, locked, provided it is still where it was measured."""
    rollout, intent = await _load(session, req.me, req.path("rollout_id"), operate=True, lock=True)
    if intent.state not in IN_FLIGHT:
        raise _not_in_flight(intent, verb)
    if rollout.ring != measured.ring:
        raise ConflictError(
            f"the rollout moved to {ring_label(rollout.ring)} while its gates were measured; "
            "try again"
        )
    return rollout, intent


@api.route(
    "POST",
    "/rollouts/{rollout_id}/evaluate",
    summary="Measure and record the ring's gates; a failed health gate pauses the rollout",
    permission="rollout.operate",
    tag="rollouts",
    response=RolloutOut,
)
async def evaluate_rollout(req: ApiRequest) -> RolloutOut:
    measured, now = await _measure(req, "evaluate")
    gates = measured.gates
    async with req.state.writing() as session:
        rollout, intent = await _reload(session, req, measured, "evaluate")
        rollout.last_gates = _gate_docs(gates, measured.ring, now)
        overall = (
            "failed"
            if any(g.verdict == "failed" for g in gates)
            else "inconclusive"
            if any(g.verdict == "inconclusive" for g in gates)
            else "passed"
        )
        events = [
            _event(
                req,
                intent,
                "gate_evaluated",
                "rollout.evaluate",
                overall,
                rollout_id=rollout.id,
                ring=measured.ring,
                gates=_summary(gates),
            )
        ]
        failing = pausing(gates)
        if failing and intent.state == "active":
            events.append(_auto_pause(req, rollout, intent, failing, now))
        rollout.status = status_for(intent.state, gates)
        rollout.updated_at = now
        await append_events(session, intent.tenant_id, events)
    return rollout_out(rollout, intent, measured, now)


def _auto_pause(
    req: ApiRequest,
    rollout: Rollout,
    intent: DeploymentIntent,
    failing: list[Gate],
    now: datetime,
) -> NewEvent:
    reason = "gates failed: " + "; ".join(f"{g.name}: {g.reason}" for g in failing)
    intent.state, intent.updated_at = "paused", now
    rollout.paused_reason = reason[:500]
    _history(rollout, req.me, "pause", now, reason=rollout.paused_reason, automatic=True)
    return _event(
        req,
        intent,
        "rollout_paused",
        "rollout.pause",
        "paused",
        rollout_id=rollout.id,
        ring=rollout.ring,
        reason=rollout.paused_reason,
        automatic=True,
        failed_gates=_summary(failing),
    )


@api.route(
    "POST",
    "/rollouts/{rollout_id}/promote",
    summary="Promote to the next ring when every gate passed (completes the intent in ring 4)",
    permission="rollout.operate",
    tag="rollouts",
    body=PromoteIn,
    response=RolloutOut,
)
async def promote_rollout(req: ApiRequest) -> RolloutOut:
    body = req.body
    assert isinstance(body, PromoteIn)
    measured, now = await _measure(req, "promote")
    if body.from_ring is not None and body.from_ring != measured.ring:
        raise ConflictError(
            f"the rollout is in {ring_label(measured.ring)}, not ring {body.from_ring}",
            field="from_ring",
        )
    decision = decide_promotion(measured.gates)
    refusal: ConflictError | None = None
    async with req.state.writing() as session:
        # Application first, then the rollout: the order intent creation also takes.
        await _lock_application(session, measured.application_id)
        rollout, intent = await _reload(session, req, measured, "promote")
        if intent.state == "paused":
            raise ConflictError(
                f"the rollout is paused ({rollout.paused_reason}); resume it first",
                details={"paused_reason": rollout.paused_reason},
            )
        rollout.last_gates = _gate_docs(measured.gates, measured.ring, now)
        rollout.updated_at = now
        gates = _summary(measured.gates)
        if decision.action == "promote":
            event = await _advance(session, req, rollout, intent, measured, now)
        elif decision.action == "pause":
            event = _auto_pause(req, rollout, intent, pausing(measured.gates), now)
            refusal = ConflictError(
                f"promotion refused and rollout paused: {decision.message}",
                details={"gates": gates, "status": "Paused"},
            )
        else:
            approval_id = await _ask_cab(session, req, intent, measured)
            event = _event(
                req,
                intent,
                "gate_evaluated",
                "rollout.promote",
                "inconclusive" if decision.action == "wait" else "refused",
                rollout_id=rollout.id,
                ring=measured.ring,
                gates=gates,
                approval_id=approval_id,
            )
            refusal = ConflictError(
                f"promotion refused: {decision.message}",
                details={
                    "gates": gates,
                    "waiting_for": decision.waiting_for,
                    "approval_id": approval_id,
                },
            )
        rollout.status = status_for(intent.state, measured.gates)
        if decision.action == "promote" and intent.state == "active":
            rollout.status = "Progressing"
        await append_events(session, intent.tenant_id, [event])
    if refusal is not None:
        # Raised after the commit: the pause, the recorded gates and any CAB request stay.
        refusal.details["rollout"] = rollout_out(rollout, intent).model_dump(mode="json")
        raise refusal
    return rollout_out(rollout, intent, measured, now)


async def _advance(
    session: AsyncSession,
    req: ApiRequest,
    rollout: Rollout,
    intent: DeploymentIntent,
    measured: Assessment,
    now: datetime,
) -> NewEvent:
    """Move the rollout into the next ring, or complete the intent from the last one."""
    gates = _summary(measured.gates)
    if measured.next_ring is None:
        intent.state, intent.updated_at = "completed", now
        _history(rollout, req.me, "complete", now)
        return _event(
            req,
            intent,
            "rollout_promoted",
            "rollout.promote",
            "completed",
            rollout_id=rollout.id,
            from_ring=measured.ring,
            to_ring=None,
            gates=gates,
        )
    to_ring = measured.next_ring
    other = await _in_flight(session, intent.tenant_id, intent.application_id, to_ring, intent.id)
    if other is not None:
        raise _one_change(other, to_ring)
    entry = measured.entry
    assert entry is not None
    _history(rollout, req.me, "promote", now, to_ring=to_ring)
    rollout.ring = intent.ring = to_ring
    rollout.ring_started_at = intent.updated_at = now
    intent.evidence_digest = entry.evidence_digest
    await _link_exception(session, entry.exception_id, intent.id)
    return _event(
        req,
        intent,
        "rollout_promoted",
        "rollout.promote",
        "success",
        rollout_id=rollout.id,
        from_ring=measured.ring,
        to_ring=to_ring,
        gates=gates,
        evidence_digest=entry.evidence_digest,
        exception_id=entry.exception_id,
    )


async def _ask_cab(
    session: AsyncSession, req: ApiRequest, intent: DeploymentIntent, measured: Assessment
) -> str | None:
    """Request CAB approval for the next ring when the promotion waits for it; its id.

    Called only when no health gate failed (a failing ring pauses instead): CAB is asked about
    a ring that is ready, not a broken one. An inconclusive ring does ask, so the approval can
    arrive while devices are still reporting. ``request_cab`` returns the open request when
    there is one, so asking again files nothing new.
    """
    entry = measured.entry
    if entry is None or entry.cab_reason is None or measured.next_ring is None:
        return None
    approval = await request_cab(
        session,
        intent.tenant_id,
        intent_id=intent.id,
        ring=measured.next_ring,
        reason=entry.cab_reason,
        requested_by=req.me.actor,
        correlation_id=req.correlation_id,
    )
    return approval.id


@api.route(
    "POST",
    "/rollouts/{rollout_id}/pause",
    summary="Pause a rollout (no-op when already paused)",
    permission="rollout.operate",
    tag="rollouts",
    body=ReasonIn,
    response=RolloutOut,
)
async def pause_rollout(req: ApiRequest) -> RolloutOut:
    body = req.body
    assert isinstance(body, ReasonIn)
    now = utcnow()
    async with req.state.writing() as session:
        rollout, intent = await _load(
            session, req.me, req.path("rollout_id"), operate=True, lock=True
        )
        if intent.state == "paused":
            return rollout_out(rollout, intent)
        if intent.state != "active":
            raise _not_in_flight(intent, "pause")
        intent.state, intent.updated_at = "paused", now
        rollout.status, rollout.paused_reason = "Paused", body.reason
        _history(rollout, req.me, "pause", now, reason=body.reason)
        await _emit(
            session,
            req,
            intent,
            "rollout_paused",
            "rollout.pause",
            "paused",
            rollout_id=rollout.id,
            ring=rollout.ring,
            reason=body.reason,
            automatic=False,
        )
    return rollout_out(rollout, intent)


@api.route(
    "POST",
    "/rollouts/{rollout_id}/resume",
    summary="Resume a paused rollout; its gates are measured again (no-op when not paused)",
    permission="rollout.operate",
    tag="rollouts",
    body=ResumeIn,
    response=RolloutOut,
)
async def resume_rollout(req: ApiRequest) -> RolloutOut:
    body = req.body
    assert isinstance(body, ResumeIn)
    measured, now = await _measure(req, "resume")
    async with req.state.writing() as session:
        rollout, intent = await _reload(session, req, measured, "resume")
        if intent.state == "active":
            return rollout_out(rollout, intent)
        intent.state, intent.updated_at = "active", now
        rollout.paused_reason = None
        rollout.last_gates = _gate_docs(measured.gates, measured.ring, now)
        # Still failing health gates leave it running but Degraded: the operator chose to.
        rollout.status = status_for("active", measured.gates)
        _history(rollout, req.me, "resume", now, reason=body.reason, status=rollout.status)
        await _emit(
            session,
            req,
            intent,
            "rollout_resumed",
            "rollout.resume",
            rollout.status,
            rollout_id=rollout.id,
            ring=rollout.ring,
            reason=body.reason,
            gates=_summary(measured.gates),
        )
    return rollout_out(rollout, intent, measured, now)


@api.route(
    "POST",
    "/rollouts/{rollout_id}/rollback",
    summary="Roll back: every install of the intent is marked rolled_back",
    permission="rollout.operate",
    tag="rollouts",
    body=ReasonIn,
    response=RolloutOut,
)
async def rollback_rollout(req: ApiRequest) -> RolloutOut:
    body = req.body
    assert isinstance(body, ReasonIn)
    now = utcnow()
    async with req.state.writing() as session:
        rollout, intent = await _load(
            session, req.me, req.path("rollout_id"), operate=True, lock=True
        )
        if intent.state == "rolled_back":
            return rollout_out(rollout, intent)
        if intent.state not in (*IN_FLIGHT, "completed"):
            raise _not_in_flight(intent, "roll back")
        result = await session.execute(
            update(DeviceInstall)
            .where(
                DeviceInstall.tenant_id == intent.tenant_id,
                DeviceInstall.intent_id == intent.id,
                DeviceInstall.status != "rolled_back",
            )
            .values(status="rolled_back")
            .execution_options(synchronize_session=False)
        )
        marked = cast(CursorResult[Any], result).rowcount
        intent.state, intent.updated_at = "rolled_back", now
        rollout.status, rollout.paused_reason = "Degraded", None
        _history(rollout, req.me, "rollback", now, reason=body.reason, installs=marked)
        await _emit(
            session,
            req,
            intent,
            "rollout_rolled_back",
            "rollout.rollback",
            "rolled_back",
            rollout_id=rollout.id,
            ring=rollout.ring,
            reason=body.reason,
            installs=marked,
        )
    return rollout_out(rollout, intent)
