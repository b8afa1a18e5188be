"""Control plane gating: gathers a rollout's gate inputs (ring, incidents, evidence, supply
chain, risk, CAB) and applies ``controlplane.rollouts``' rules to them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.cab import cab_approved, cab_requirement, latest_assessment
from controlplane.catalog import supply_chain_gate
from controlplane.evidence import evidence_status
from controlplane.models_release import (
    Application,
    AppVersion,
    DeploymentIntent,
)
from controlplane.rollouts import (
    LAST_RING,
    Gate,
    cab_gate,
    evidence_gate,
    health_gates,
    measure_ring,
    min_reports,
    open_incidents,
    rollback_gate,
    schedule_gate,
    success_target,
    supply_chain_result,
    version_gate,
)
from controlplane.settings import ControlPlaneSettings


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


def gate_docs(gates: list[Gate], ring: int, now: datetime) -> list[dict[str, Any]]:
    return [{**g.as_dict(), "ring": ring, "evaluated_at": now.isoformat()} for g in gates]


def gate_summary(gates: list[Gate]) -> list[dict[str, Any]]:
    return [
        {"name": g.name, "verdict": g.verdict, "measured": g.measured, "threshold": g.threshold}
        for g in gates
    ]


# -- output ---------------------------------------------------------------------------------
