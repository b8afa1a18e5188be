"""Control plane API: deployment intents (seed 002 §5.4-5.6).

Guardrails: a target scope must lie in the caller's subtree and in one of the application's
allowed scopes (cross-boundary targeting is denied by default); one in-flight intent per
application and ring, checked under a lock on the application row; an intent is idempotent
by its client key.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, require
from controlplane.api.rollout_support import (
    IntentCreate,
    IntentOut,
    application_boundary,
    check_exclusions,
    emit,
    in_flight_intent,
    intent_out,
    link_exception,
    lock_application,
    one_change_conflict,
    overlaps,
    publisher_boundary,
    record_history,
    scope_for,
)
from controlplane.errors import ConflictError, NotFoundError
from controlplane.evidence import evidence_status
from controlplane.gating import (
    entry_gates,
    gate_summary,
)
from controlplane.http import Api, ApiRequest, json_response
from controlplane.models import Scope, new_id, utcnow
from controlplane.models_release import (
    Application,
    AppVersion,
    DeploymentIntent,
    Rollout,
)
from controlplane.rollouts import (
    ring_label,
)
from controlplane.signing import digest

api = Api()


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
        target = await scope_for(session, me, body.target_scope_id, "target_scope_id")
        publisher_boundary(me, target)
        version = await session.get(AppVersion, body.version_id)
        if version is None or version.tenant_id != me.tenant_id:
            raise NotFoundError(f"no version {body.version_id!r}", field="version_id")
        app = await session.get_one(Application, version.application_id)
        # Locked before the replay lookup, so a concurrent identical request finds this one's
        # intent (and answers 200) rather than a busy ring.
        await lock_application(session, app.id)
        replay = await _replay(session, me, body.client_key, request_digest)
        if replay is not None:
            return json_response(replay, 200)
        await application_boundary(session, me, target, app)
        await check_exclusions(session, me, target, body.constraints.exclude_scope_ids)
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
        other = await in_flight_intent(session, me.tenant_id, app.id, body.ring)
        if other is not None:
            raise one_change_conflict(other, body.ring)
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
        record_history(rollout, me, "create", now)
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
        await link_exception(session, entry.exception_id, intent.id)
        await emit(
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
            gates=gate_summary(entry.gates),
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
