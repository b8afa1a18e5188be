"""Control plane API: deterministic risk assessments of application versions (seed 002 §9)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from controlplane.api.catalog import version_for
from controlplane.cab import (
    cab_requirement,
    latest_assessment,
)
from controlplane.errors import (
    ConflictError,
    NotFoundError,
)
from controlplane.events import append_event
from controlplane.http import Api, ApiRequest, Strict
from controlplane.models import new_id, utcnow
from controlplane.models_release import (
    Application,
    RiskAssessment,
)
from controlplane.release import RINGS
from controlplane.risk import (
    BlastRadius,
    Complexity,
    DataAccess,
    Exploitability,
    History,
    Privilege,
    RiskInputs,
    SupplyChain,
    Vulnerability,
    assess,
)

log = logging.getLogger(__name__)
api = Api()


Normalized = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
"""An explicit normalized value, for a case the factor's rubric does not name."""


class BlastRadiusIn(Strict):
    ring: int = Field(ge=0, le=4)
    """Furthest ring of the planned rollout (0 lab … 4 global)."""
    target_devices: int = Field(ge=0, le=100_000_000)
    """Devices targeted at that ring."""


class RiskIn(Strict):
    """One answer per factor: a rubric category or a normalized value in [0.0, 1.0]."""

    privilege_impact: Privilege | Normalized
    supply_chain_trust: SupplyChain | Normalized
    """Publisher trust: signature validity, notarization, reputation."""
    exploitability: Exploitability | Normalized
    data_access: DataAccess | Normalized
    sbom_vulnerability: Vulnerability | Normalized
    blast_radius: BlastRadiusIn | Normalized
    operational_complexity: Complexity | Normalized
    history: History | Normalized
    justification: str = Field(default="", max_length=2000)
    """The assessor's notes; data, never instructions."""


class FactorOut(BaseModel):
    name: str
    input: Any
    """The category, number or blast-radius object given."""
    normalized: float
    weight: int
    contribution: float
    """Score points: weight * normalized."""
    explanation: str


class CabRing(BaseModel):
    ring: int
    name: str
    required: bool
    """Whether publishing into this ring needs CAB approval."""
    reason: str


class RiskOut(BaseModel):
    id: str
    version_id: str
    application_id: str
    model_version: str
    inputs: dict[str, Any]
    factors: list[FactorOut]
    score: float
    """0..100."""
    threshold: float
    """The CAB threshold in force when assessed; scores above it need CAB from ring 2."""
    requires_cab: bool
    """Whether some ring of a rollout will need CAB (score above threshold, or privileged)."""
    privileged: bool
    """Whether the application is privileged tooling (CAB from ring 1 whatever the score)."""
    cab_by_ring: list[CabRing]
    created_by: str
    created_at: datetime


def _risk_out(row: RiskAssessment, application: Application) -> RiskOut:
    rings = []
    for ring, name in RINGS.items():
        required, reason = cab_requirement(row.score, application.privileged, ring, row.threshold)
        rings.append(CabRing(ring=ring, name=name, required=required, reason=reason))
    return RiskOut(
        id=row.id,
        version_id=row.version_id,
        application_id=application.id,
        model_version=row.model_version,
        inputs=row.inputs,
        factors=[FactorOut.model_validate(f) for f in row.factors],
        score=row.score,
        threshold=row.threshold,
        requires_cab=row.requires_cab,
        privileged=application.privileged,
        cab_by_ring=rings,
        created_by=row.created_by,
        created_at=row.created_at,
    )


@api.route(
    "POST",
    "/versions/{version_id}/risk",
    summary="Assess a version's risk with model v1.0 and record the result",
    permission="risk.assess",
    tag="risk",
    body=RiskIn,
    response=RiskOut,
    status=201,
)
async def assess_risk(req: ApiRequest) -> RiskOut:
    body = req.body
    assert isinstance(body, RiskIn)
    me = req.me
    blast = body.blast_radius
    # The request model admits only rubric categories and values in [0, 1], so assess()
    # has nothing left to refuse.
    result = assess(
        RiskInputs(
            privilege_impact=body.privilege_impact,
            supply_chain_trust=body.supply_chain_trust,
            exploitability=body.exploitability,
            data_access=body.data_access,
            sbom_vulnerability=body.sbom_vulnerability,
            blast_radius=(
                BlastRadius(blast.ring, blast.target_devices)
                if isinstance(blast, BlastRadiusIn)
                else blast
            ),
            operational_complexity=body.operational_complexity,
            history=body.history,
        )
    )
    threshold = req.state.settings.cab_risk_threshold
    async with req.state.writing() as session:
        version, application = await version_for(session, me, req.path("version_id"), write=True)
        if version.state == "retired":
            raise ConflictError(f"version {version.version} is retired", field="version_id")
        row = RiskAssessment(
            id=new_id("rsk"),
            tenant_id=me.tenant_id,
            version_id=version.id,
            model_version=result.model_version,
            inputs={**result.inputs_json(), "justification": body.justification},
            factors=[f.as_json() for f in result.factors],
            score=result.score,
            threshold=threshold,
            # Some ring of a rollout will need CAB: the score gate or privileged tooling.
            requires_cab=result.score > threshold or application.privileged,
            created_by=me.name,
            created_at=utcnow(),
        )
        session.add(row)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="risk_assessed",
            action="risk.assess",
            outcome="requires_cab" if row.requires_cab else "below_threshold",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={
                "assessment_id": row.id,
                "version_id": version.id,
                "application_id": application.id,
                "model_version": row.model_version,
                "score": row.score,
                "threshold": threshold,
                "requires_cab": row.requires_cab,
            },
        )
        return _risk_out(row, application)


@api.route(
    "GET",
    "/versions/{version_id}/risk",
    summary="A version's latest risk assessment, each factor explained",
    permission="risk.read",
    tag="risk",
    response=RiskOut,
)
async def get_risk(req: ApiRequest) -> RiskOut:
    async with req.state.sessions() as session:
        version, application = await version_for(session, req.me, req.path("version_id"))
        row = await latest_assessment(session, req.me.tenant_id, version.id)
    if row is None:
        raise NotFoundError(f"version {version.version} has not been assessed yet")
    return _risk_out(row, application)
