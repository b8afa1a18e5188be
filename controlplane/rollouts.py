"""Control plane rollout rules: ring gates and promotion decisions (seed 002 §10.2, §9.3).

Sits under the rollouts API (``controlplane.api.rollouts``), which gathers the inputs and
enforces the outcome. Two reads touch the database, both cheap whatever the ring's size:
``measure_ring`` aggregates a ring's installs in two small GROUP BY statements, and
``open_incidents`` lists an application's open incidents. Everything else is pure: each gate
is a frozen ``Gate`` with its measured value, threshold, verdict and reason, and the decisions
(``decide_promotion``, ``status_for``) are functions of gates.

Gates come in two kinds:

- ``health`` gates judge the ring the rollout is in (install success rate, time to
  compliance, no open incident). A failed one pauses the rollout: the ring is unhealthy.
- ``readiness`` gates judge whether the next ring may be entered (rollback validated, version
  state, evidence pack, supply chain, CAB approval, schedule). A failed one refuses the
  promotion but leaves a healthy ring running: waiting for paperwork is not a fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.models import UtcDateTime
from controlplane.models_release import DeviceInstall, Incident
from controlplane.release import RINGS

Verdict = Literal["passed", "failed", "inconclusive"]
GateKind = Literal["health", "readiness"]
Measure = float | int | str | bool | None
Status = Literal["Healthy", "Progressing", "Paused", "Degraded"]

LAST_RING: Final = max(RINGS)
"""Leaving this ring completes the intent."""

DEPLOYABLE: Final[dict[int, tuple[str, ...]]] = {
    0: ("packaged", "staged", "approved", "published"),
    **dict.fromkeys(range(1, LAST_RING + 1), ("approved", "published")),
}
"""Version states a ring may receive: the lab takes anything built and not retired; Canary
and beyond need an approved or published version (seed 002 §5.1)."""

INCIDENTS_LISTED: Final = 20
"""Most open incident ids a gate names (the count is always exact)."""


@dataclass(frozen=True, slots=True)
class Gate:
    """One gate's verdict, with what was measured against what."""

    name: str
    """``install_success_rate``, ``time_to_compliance``, ``no_open_incident``, …"""
    kind: GateKind
    """``health`` (judges the current ring) or ``readiness`` (judges entering the next)."""
    verdict: Verdict
    """``passed``, ``failed`` or ``inconclusive`` (not enough data yet)."""
    measured: Measure
    """The measured value (a rate, a count, a state, a digest…); None when nothing was."""
    threshold: Measure
    """What the measured value is held to."""
    reason: str
    """A sentence a person can read."""
    detail: dict[str, Any] = field(default_factory=dict)
    """Structured specifics (counts per site class, missing parts, incident ids, …)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form, as stored in ``Rollout.last_gates`` and event data."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RingMeasurement:
    """A ring's installs, counted by status and site class in one aggregate."""

    ring: int
    """The ring measured."""
    by_status: dict[str, int]
    """Installs per status (``pending``, ``succeeded``, ``failed``, ``rolled_back``)."""
    pending_by_class: dict[str, int]
    """Pending installs per site class."""
    overdue_by_class: dict[str, int]
    """Pending installs older than their site class's time to compliance, per site class."""

    @property
    def succeeded(self) -> int:
        """Installs reported successful."""
        return self.by_status.get("succeeded", 0)

    @property
    def failed(self) -> int:
        """Installs reported failed."""
        return self.by_status.get("failed", 0)

    @property
    def pending(self) -> int:
        """Installs assigned and not reported yet."""
        return self.by_status.get("pending", 0)

    @property
    def reported(self) -> int:
        """Installs with a result (succeeded or failed)."""
        return self.succeeded + self.failed

    @property
    def overdue(self) -> int:
        """Pending installs past their time to compliance."""
        return sum(self.overdue_by_class.values())


async def measure_ring(
    session: AsyncSession,
    tenant_id: str,
    intent_id: str,
    ring: int,
    now: datetime,
    limits: Mapping[str, timedelta],
) -> RingMeasurement:
    """Count an intent's installs in one ring by status, and its pending ones by site class.

    Two GROUP BY statements over the ``(intent_id, ring, status)`` index, each returning a
    handful of rows whatever the ring's size: the status counts come from one index range
    scan, and only pending rows are read to judge time to compliance, so a 50,000-device ring
    costs a few times a bare ``COUNT(*)`` (``bench/gates.py``). One statement grouping by
    status and site class would read every row of the ring instead.

    Args:
        session: A session to read with.
        tenant_id: The intent's tenant (rows of other tenants are never counted).
        intent_id: The deployment intent.
        ring: The ring to measure.
        now: The moment overdue is judged at (timezone-aware).
        limits: Time to compliance per site class (``settings.time_to_compliance``); a site
            class missing from it is held to the shortest limit, never waved through.
    """
    ring_rows = and_(
        DeviceInstall.intent_id == intent_id,
        DeviceInstall.ring == ring,
        DeviceInstall.tenant_id == tenant_id,
    )
    statuses = await session.execute(
        select(DeviceInstall.status, func.count()).where(ring_rows).group_by(DeviceInstall.status)
    )
    by_status = {status: count for status, count in statuses.all()}
    if not by_status.get("pending"):
        return RingMeasurement(ring, by_status, {}, {})
    strictest = min(limits.values(), default=timedelta(0))
    overdue = case(
        *[
            (
                and_(
                    DeviceInstall.site_class == site_class,
                    DeviceInstall.assigned_at < literal(now - limit, UtcDateTime()),
                ),
                1,
            )
            for site_class, limit in sorted(limits.items())
        ],
        (
            and_(
                DeviceInstall.site_class.not_in(sorted(limits)),
                DeviceInstall.assigned_at < literal(now - strictest, UtcDateTime()),
            ),
            1,
        ),
        else_=0,
    )
    classes = await session.execute(
        select(DeviceInstall.site_class, func.count(), func.sum(overdue))
        .where(ring_rows, DeviceInstall.status == "pending")
        .group_by(DeviceInstall.site_class)
    )
    pending_by_class: dict[str, int] = {}
    overdue_by_class: dict[str, int] = {}
    for site_class, count, late in classes.all():
        pending_by_class[site_class] = count
        if late:
            overdue_by_class[site_class] = int(late)
    return RingMeasurement(ring, by_status, pending_by_class, overdue_by_class)


async def open_incidents(
    session: AsyncSession, tenant_id: str, application_id: str
) -> tuple[int, list[str]]:
    """How many incidents of an application are open, and the oldest few of their ids."""
    count = (
        await session.execute(
            select(func.count()).where(
                Incident.tenant_id == tenant_id,
                Incident.application_id == application_id,
                Incident.state == "open",
            )
        )
    ).scalar_one()
    if not count:
        return 0, []
    ids = (
        await session.execute(
            select(Incident.id)
            .where(
                Incident.tenant_id == tenant_id,
                Incident.application_id == application_id,
                Incident.state == "open",
            )
            .order_by(Incident.created_at, Incident.id)
            .limit(INCIDENTS_LISTED)
        )
    ).scalars()
    return count, list(ids)


def ring_label(ring: int) -> str:
    """``ring 1 (canary)``."""
    return f"ring {ring} ({RINGS[ring]})"


def _percent(rate: float) -> str:
    # Rounded down, so a rate just under its target never prints as the target itself.
    return f"{math.floor(rate * 10_000) / 100:.2f}%"


def success_rate_gate(m: RingMeasurement, target: float, min_devices: int) -> Gate:
    """Install success rate of a ring: succeeded / (succeeded + failed) against its target.

    Inconclusive while fewer than ``min_devices`` installs reported, unless failure is already
    certain: when even every pending install succeeding would leave the rate under target.

    Args:
        m: The ring's measurement.
        target: The rate the ring must reach (``settings.gate_success_rate``).
        min_devices: Reports needed before the rate counts (``settings.gate_min_devices``).
    """
    detail: dict[str, Any] = {
        "succeeded": m.succeeded,
        "failed": m.failed,
        "pending": m.pending,
        "reported": m.reported,
        "min_devices": min_devices,
    }
    rate = m.succeeded / m.reported if m.reported else None
    name, where = "install_success_rate", ring_label(m.ring)
    if m.reported < min_devices:
        assigned = m.reported + m.pending
        best = (m.succeeded + m.pending) / assigned if assigned else 1.0
        if best < target:
            return Gate(
                name,
                "health",
                "failed",
                rate,
                target,
                f"{m.failed} of {assigned} installs in {where} failed: even if every pending "
                f"one succeeds the rate stays at {_percent(best)}, under {_percent(target)}",
                detail,
            )
        waiting = min_devices - m.reported
        detail["waiting_for"] = waiting
        return Gate(
            name,
            "health",
            "inconclusive",
            rate,
            target,
            f"inconclusive: waiting for {waiting} more devices ({m.reported} of {min_devices} "
            f"needed have reported in {where})",
            detail,
        )
    assert rate is not None
    if rate < target:
        return Gate(
            name,
            "health",
            "failed",
            rate,
            target,
            f"{_percent(rate)} of {m.reported} reported installs succeeded in {where}; "
            f"it needs {_percent(target)}",
            detail,
        )
    return Gate(
        name,
        "health",
        "passed",
        rate,
        target,
        f"{_percent(rate)} of {m.reported} reported installs succeeded in {where} "
        f"(target {_percent(target)})",
        detail,
    )


def compliance_time_gate(m: RingMeasurement, limits: Mapping[str, timedelta]) -> Gate:
    """No pending install older than its site class's time to compliance (seed 002 §10.2)."""
    hours = {site_class: limit.total_seconds() / 3600 for site_class, limit in limits.items()}
    detail: dict[str, Any] = {
        "limit_hours": hours,
        "pending": m.pending_by_class,
        "overdue": m.overdue_by_class,
    }
    if not m.overdue:
        return Gate(
            "time_to_compliance",
            "health",
            "passed",
            0,
            0,
            f"no install in {ring_label(m.ring)} is past its site class's time to compliance "
            f"({m.pending} pending)",
            detail,
        )
    worst = ", ".join(
        f"{site_class} {n} over {hours.get(site_class, min(hours.values(), default=0)):g}h"
        for site_class, n in sorted(m.overdue_by_class.items())
    )
    return Gate(
        "time_to_compliance",
        "health",
        "failed",
        m.overdue,
        0,
        f"{m.overdue} installs in {ring_label(m.ring)} are past their time to compliance ({worst})",
        detail,
    )


def incident_gate(count: int, incident_ids: Sequence[str]) -> Gate:
    """No open incident attributed to the application (seed 002 §10.2)."""
    detail: dict[str, Any] = {"incident_ids": list(incident_ids)}
    if not count:
        return Gate("no_open_incident", "health", "passed", 0, 0, "no open incident", detail)
    return Gate(
        "no_open_incident",
        "health",
        "failed",
        count,
        0,
        f"{count} open incident(s) for the application: {', '.join(incident_ids)}",
        detail,
    )


def rollback_gate(evidence_digest: str | None, missing: Sequence[str]) -> Gate:
    """Rollback validated: the version's newest evidence pack carries a rollback plan.

    Only evidence counts, not a flag in the intent: the pack is immutable, content-addressed
    and reviewed by CAB, whereas an intent's constraints are written by the same publisher who
    asks for the promotion (separation of duties, seed 002 §2).
    """
    detail: dict[str, Any] = {"evidence_digest": evidence_digest}
    if evidence_digest is not None and "rollback_plan" not in missing:
        return Gate(
            "rollback_validated",
            "readiness",
            "passed",
            evidence_digest,
            "rollback_plan",
            f"evidence pack {evidence_digest[:12]} carries a rollback plan",
            detail,
        )
    why = "no evidence pack" if evidence_digest is None else "the newest evidence pack"
    return Gate(
        "rollback_validated",
        "readiness",
        "failed",
        evidence_digest,
        "rollback_plan",
        f"rollback not validated: {why} has no rollback plan",
        detail,
    )


def evidence_gate(evidence_digest: str | None, missing: Sequence[str], ring: int) -> Gate:
    """A complete evidence pack before entering ``ring`` (seed 002 §9.3: Ring 1 still needs it)."""
    detail: dict[str, Any] = {"missing": list(missing), "evidence_digest": evidence_digest}
    if evidence_digest is not None and not missing:
        return Gate(
            "evidence_pack",
            "readiness",
            "passed",
            evidence_digest,
            "complete",
            f"evidence pack {evidence_digest[:12]} is complete",
            detail,
        )
    what = "no evidence pack" if evidence_digest is None else "evidence pack incomplete"
    return Gate(
        "evidence_pack",
        "readiness",
        "failed",
        evidence_digest,
        "complete",
        f"{what} for {ring_label(ring)}: missing {', '.join(missing)}",
        detail,
    )


def version_gate(state: str, ring: int) -> Gate:
    """The version's lifecycle state allows ``ring`` (``DEPLOYABLE``)."""
    allowed = DEPLOYABLE[ring]
    threshold = "|".join(allowed)
    if state in allowed:
        return Gate(
            "version_state",
            "readiness",
            "passed",
            state,
            threshold,
            f"version is {state}, which {ring_label(ring)} accepts",
        )
    return Gate(
        "version_state",
        "readiness",
        "failed",
        state,
        threshold,
        f"version is {state}; {ring_label(ring)} needs it {' or '.join(allowed)}",
    )


def supply_chain_result(ok: bool, reason: str, exception_id: str | None) -> Gate:
    """The catalog's supply-chain gate (scan passed or an approved exception) as a gate."""
    return Gate(
        "supply_chain",
        "readiness",
        "passed" if ok else "failed",
        "pass" if ok else "fail",
        "pass",
        reason,
        {"exception_id": exception_id},
    )


def cab_gate(required: bool, reason: str, approval_id: str | None) -> Gate:
    """CAB approval for entering the next ring where ``cab.cab_requirement`` says it is needed."""
    detail: dict[str, Any] = {"required": required, "approval_id": approval_id}
    if not required:
        return Gate(
            "cab_approval", "readiness", "passed", "not_required", "approved", reason, detail
        )
    if approval_id is not None:
        return Gate(
            "cab_approval",
            "readiness",
            "passed",
            "approved",
            "approved",
            f"{reason}; approval {approval_id} is in force",
            detail,
        )
    return Gate(
        "cab_approval",
        "readiness",
        "failed",
        "missing",
        "approved",
        f"waiting for CAB approval: {reason}",
        detail,
    )


def schedule_gate(schedule: Mapping[str, Any], now: datetime) -> Gate:
    """The intent's schedule lets a promotion happen now.

    Args:
        schedule: ``{"start_at": ISO time or None, "windows": [{"start", "end"}, …]}`` as the
            intent stored it; no windows means any time after ``start_at``.
        now: The moment of the promotion.
    """
    start_at = schedule.get("start_at")
    if start_at is not None and datetime.fromisoformat(start_at) > now:
        return Gate(
            "schedule",
            "readiness",
            "failed",
            now.isoformat(),
            start_at,
            f"the intent is scheduled to start at {start_at}",
        )
    windows = [
        (datetime.fromisoformat(w["start"]), datetime.fromisoformat(w["end"]))
        for w in schedule.get("windows") or []
    ]
    if not windows:
        return Gate("schedule", "readiness", "passed", now.isoformat(), None, "no schedule limits")
    if any(start <= now < end for start, end in windows):
        return Gate(
            "schedule", "readiness", "passed", now.isoformat(), None, "inside a deployment window"
        )
    upcoming = sorted(start for start, _ in windows if start > now)
    later = f"; the next opens at {upcoming[0].isoformat()}" if upcoming else "; none is left"
    return Gate(
        "schedule",
        "readiness",
        "failed",
        now.isoformat(),
        None,
        f"outside the intent's deployment windows{later}",
    )


def health_gates(
    m: RingMeasurement,
    *,
    target: float,
    min_devices: int,
    limits: Mapping[str, timedelta],
    incidents: int,
    incident_ids: Sequence[str],
) -> list[Gate]:
    """The gates judging the ring a rollout is in."""
    return [
        success_rate_gate(m, target, min_devices),
        compliance_time_gate(m, limits),
        incident_gate(incidents, incident_ids),
    ]


def success_target(rates: Mapping[int, float], ring: int) -> float:
    """The ring's success-rate target; a ring without one is held to the strictest target."""
    return rates.get(ring, max(rates.values(), default=1.0))


def min_reports(minimums: Mapping[int, int], ring: int) -> int:
    """Reports a ring needs before its rate counts; a ring without a minimum needs the largest."""
    return minimums.get(ring, max(minimums.values(), default=1))


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    """What a promotion attempt does, given the gates for leaving the current ring."""

    action: Literal["promote", "pause", "refuse", "wait"]
    """``promote`` (all passed), ``pause`` (a health gate failed), ``refuse`` (only readiness
    gates failed) or ``wait`` (inconclusive, none failed)."""
    message: str
    """Why, naming the gates."""
    failed: tuple[str, ...]
    """Names of the failed gates."""
    waiting_for: int
    """Devices still to report before the inconclusive gates can decide."""


def decide_promotion(gates: Sequence[Gate]) -> PromotionDecision:
    """Promote only when every gate passed; a failed health gate pauses; inconclusive waits."""
    failed = [g for g in gates if g.verdict == "failed"]
    waiting = sum(int(g.detail.get("waiting_for", 0)) for g in gates if g.verdict == "inconclusive")
    names = tuple(g.name for g in failed)
    if failed:
        action: Literal["pause", "refuse"] = (
            "pause" if any(g.kind == "health" for g in failed) else "refuse"
        )
        reasons = "; ".join(f"{g.name}: {g.reason}" for g in failed)
        return PromotionDecision(action, f"gates failed: {reasons}", names, waiting)
    if any(g.verdict == "inconclusive" for g in gates):
        return PromotionDecision(
            "wait", f"inconclusive: waiting for {waiting} more devices", names, waiting
        )
    return PromotionDecision("promote", "all gates passed", names, 0)


def pausing(gates: Sequence[Gate]) -> list[Gate]:
    """The failed health gates: the ones that pause a rollout."""
    return [g for g in gates if g.kind == "health" and g.verdict == "failed"]


def status_for(intent_state: str, gates: Sequence[Gate]) -> Status:
    """A rollout's status (Argo Rollouts' phases) from its intent's state and its health gates.

    Paused while the intent is paused; Degraded once rolled back, or while a health gate fails
    on a rollout that is not paused; Healthy when every health gate passed (or the intent is
    completed); Progressing otherwise.
    """
    if intent_state == "paused":
        return "Paused"
    if intent_state == "rolled_back":
        return "Degraded"
    if intent_state == "completed":
        return "Healthy"
    health = [g for g in gates if g.kind == "health"]
    if any(g.verdict == "failed" for g in health):
        return "Degraded"
    if health and all(g.verdict == "passed" for g in health):
        return "Healthy"
    return "Progressing"
