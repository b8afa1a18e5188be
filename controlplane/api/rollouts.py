"""Control plane API: rollouts and their ring verbs (seed 002 §10); intents are ``api/intents.py``.

Verbs follow Argo Rollouts (promote, pause, resume, rollback; phases Healthy, Progressing,
Paused, Degraded). The rules live in ``controlplane.rollouts``; this module gathers their
inputs (ring measurement, incidents, evidence, supply chain, risk and CAB approvals) and
enforces their outcome. A verb that must measure a ring reads in its own session first and
then writes in a short transaction that re-checks the rollout did not move meanwhile, so a
large ring's aggregate never holds SQLite's single writer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.api.catalog import app_for
from controlplane.api.rollout_support import (
    AppRolloutQuery,
    PromoteIn,
    ReasonIn,
    ResumeIn,
    RolloutList,
    RolloutOut,
    RolloutQuery,
    emit,
    in_flight_intent,
    link_exception,
    load_rollout,
    lock_application,
    make_event,
    one_change_conflict,
    record_history,
    rollout_out,
)
from controlplane.cab import request_cab
from controlplane.connectors import TaskRunner
from controlplane.connectors.simulator import FleetSimulator
from controlplane.connectors.targeting import load_intent
from controlplane.errors import ConflictError
from controlplane.events import NewEvent, append_events
from controlplane.gating import (
    Assessment,
    assess,
    gate_docs,
    gate_summary,
)
from controlplane.http import Api, ApiRequest, decode_cursor, paginate
from controlplane.models import Scope, utcnow
from controlplane.models_release import (
    DeploymentIntent,
    Rollout,
)
from controlplane.release import IN_FLIGHT
from controlplane.rollouts import (
    Gate,
    decide_promotion,
    pausing,
    ring_label,
    status_for,
)

api = Api()


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
        rollout, intent = await load_rollout(session, req.me, req.path("rollout_id"), operate=False)
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
        _, intent = await load_rollout(session, req.me, req.path("rollout_id"), operate=True)
        if intent.state not in IN_FLIGHT:
            raise _not_in_flight(intent, verb)
        return await assess(session, req.state.settings, intent, now), now


async def _reload(
    session: AsyncSession, req: ApiRequest, measured: Assessment, verb: str
) -> tuple[Rollout, DeploymentIntent]:
    """Write phase: the rollout, locked, provided it is still where it was measured."""
    rollout, intent = await load_rollout(
        session, req.me, req.path("rollout_id"), operate=True, lock=True
    )
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
        rollout.last_gates = gate_docs(gates, measured.ring, now)
        overall = (
            "failed"
            if any(g.verdict == "failed" for g in gates)
            else "inconclusive"
            if any(g.verdict == "inconclusive" for g in gates)
            else "passed"
        )
        events = [
            make_event(
                req,
                intent,
                "gate_evaluated",
                "rollout.evaluate",
                overall,
                rollout_id=rollout.id,
                ring=measured.ring,
                gates=gate_summary(gates),
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
    record_history(rollout, req.me, "pause", now, reason=rollout.paused_reason, automatic=True)
    return make_event(
        req,
        intent,
        "rollout_paused",
        "rollout.pause",
        "paused",
        rollout_id=rollout.id,
        ring=rollout.ring,
        reason=rollout.paused_reason,
        automatic=True,
        failed_gates=gate_summary(failing),
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
        await lock_application(session, measured.application_id)
        rollout, intent = await _reload(session, req, measured, "promote")
        if intent.state == "paused":
            raise ConflictError(
                f"the rollout is paused ({rollout.paused_reason}); resume it first",
                details={"paused_reason": rollout.paused_reason},
            )
        rollout.last_gates = gate_docs(measured.gates, measured.ring, now)
        rollout.updated_at = now
        gates = gate_summary(measured.gates)
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
            event = make_event(
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
    req.state.wake("simulator")  # the execution plane publishes to the new ring at once
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
    gates = gate_summary(measured.gates)
    if measured.next_ring is None:
        intent.state, intent.updated_at = "completed", now
        record_history(rollout, req.me, "complete", now)
        return make_event(
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
    other = await in_flight_intent(
        session, intent.tenant_id, intent.application_id, to_ring, intent.id
    )
    if other is not None:
        raise one_change_conflict(other, to_ring)
    entry = measured.entry
    assert entry is not None
    record_history(rollout, req.me, "promote", now, to_ring=to_ring)
    rollout.ring = intent.ring = to_ring
    rollout.ring_started_at = intent.updated_at = now
    intent.evidence_digest = entry.evidence_digest
    await link_exception(session, entry.exception_id, intent.id)
    return make_event(
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
        rollout, intent = await load_rollout(
            session, req.me, req.path("rollout_id"), operate=True, lock=True
        )
        if intent.state == "paused":
            return rollout_out(rollout, intent)
        if intent.state != "active":
            raise _not_in_flight(intent, "pause")
        intent.state, intent.updated_at = "paused", now
        rollout.status, rollout.paused_reason = "Paused", body.reason
        record_history(rollout, req.me, "pause", now, reason=body.reason)
        await emit(
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
        rollout.last_gates = gate_docs(measured.gates, measured.ring, now)
        # Still failing health gates leave it running but Degraded: the operator chose to.
        rollout.status = status_for("active", measured.gates)
        record_history(rollout, req.me, "resume", now, reason=body.reason, status=rollout.status)
        await emit(
            session,
            req,
            intent,
            "rollout_resumed",
            "rollout.resume",
            rollout.status,
            rollout_id=rollout.id,
            ring=rollout.ring,
            reason=body.reason,
            gates=gate_summary(measured.gates),
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
        rollout, intent = await load_rollout(
            session, req.me, req.path("rollout_id"), operate=True, lock=True
        )
        if intent.state == "rolled_back":
            return rollout_out(rollout, intent)
        if intent.state not in (*IN_FLIGHT, "completed"):
            raise _not_in_flight(intent, "roll back")
        intent.state, intent.updated_at = "rolled_back", now
        rollout.status, rollout.paused_reason = "Degraded", None
        plane_intent = await load_intent(session, intent.id)
    # The execution plane undoes the installs (the simulator restores each device's previous
    # version); it takes its own write transactions, so it runs after this one commits.
    assert plane_intent is not None
    outcome = await TaskRunner(req.state, FleetSimulator(req.state)).remediate(
        plane_intent,
        None,
        "rollback",
        key=f"rollback:{intent.id}",
        actor=req.me.actor,
        correlation_id=req.correlation_id,
    )
    marked = outcome.result.devices if outcome.result is not None else 0
    async with req.state.writing() as session:
        rollout, intent = await load_rollout(
            session, req.me, req.path("rollout_id"), operate=True, lock=True
        )
        record_history(rollout, req.me, "rollback", now, reason=body.reason, installs=marked)
        await emit(
            session,
            req,
            intent,
            "rollout_rolled_back",
            "rollout.rollback",
            "rolled_back" if outcome.result is not None else "failed",
            rollout_id=rollout.id,
            ring=rollout.ring,
            reason=body.reason,
            installs=marked,
            plane_error=outcome.error,
        )
    return rollout_out(rollout, intent)
