"""Ring gates and promotion rules, pure: no database, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.rollouts import (
    Gate,
    RingMeasurement,
    cab_gate,
    compliance_time_gate,
    decide_promotion,
    evidence_gate,
    incident_gate,
    min_reports,
    rollback_gate,
    schedule_gate,
    status_for,
    success_rate_gate,
    success_target,
    version_gate,
)
from controlplane.settings import ControlPlaneSettings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LIMITS = ControlPlaneSettings().time_to_compliance


def ring(
    succeeded: int = 0,
    failed: int = 0,
    pending: int = 0,
    *,
    number: int = 1,
    overdue: dict[str, int] | None = None,
) -> RingMeasurement:
    by_status = {"succeeded": succeeded, "failed": failed, "pending": pending}
    return RingMeasurement(number, by_status, {"online": pending}, overdue or {})


def gate(name: str, kind: str, verdict: str, **detail: int) -> Gate:
    return Gate(name, kind, verdict, None, None, name, dict(detail))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("succeeded", "failed", "verdict"),
    [
        (979, 21, "failed"),  # canary at 97.9 % against 98 %
        (980, 20, "passed"),  # exactly the target passes
        (1000, 0, "passed"),
        (49, 1, "passed"),  # 98 % of the 50 reported (min 20)
    ],
)
def test_success_rate_against_target(succeeded: int, failed: int, verdict: str) -> None:
    result = success_rate_gate(ring(succeeded, failed), 0.98, 20)
    assert result.verdict == verdict
    assert result.measured == pytest.approx(succeeded / (succeeded + failed))
    assert result.threshold == 0.98
    assert result.kind == "health"


def test_rate_just_under_target_never_prints_as_the_target() -> None:
    result = success_rate_gate(ring(97_999, 2_001), 0.98, 20)
    assert result.verdict == "failed"
    assert "97.99%" in result.reason and "it needs 98.00%" in result.reason


def test_too_few_reports_is_inconclusive_with_how_many_more() -> None:
    result = success_rate_gate(ring(5, 0, pending=30), 0.98, 20)
    assert result.verdict == "inconclusive"
    assert result.detail["waiting_for"] == 15
    assert result.reason.startswith("inconclusive: waiting for 15 more devices")


def test_certain_failure_is_not_inconclusive() -> None:
    # 3 of 10 assigned failed: even if all 7 pending succeed the rate is 70 %.
    result = success_rate_gate(ring(0, 3, pending=7), 0.98, 20)
    assert result.verdict == "failed"
    assert "even if every pending one succeeds" in result.reason


def test_nothing_assigned_waits_for_the_minimum() -> None:
    result = success_rate_gate(ring(), 0.98, 20)
    assert (result.verdict, result.measured, result.detail["waiting_for"]) == (
        "inconclusive",
        None,
        20,
    )


def test_time_to_compliance_fails_on_overdue_installs_only() -> None:
    fine = compliance_time_gate(ring(pending=40), LIMITS)
    assert (fine.verdict, fine.measured) == ("passed", 0)
    late = compliance_time_gate(ring(pending=40, overdue={"online": 3}), LIMITS)
    assert (late.verdict, late.measured, late.threshold) == ("failed", 3, 0)
    assert "online 3 over 24h" in late.reason
    assert late.detail["limit_hours"]["air_gapped"] == 168


def test_open_incident_fails_its_gate() -> None:
    assert incident_gate(0, []).verdict == "passed"
    failed = incident_gate(2, ["inc_a", "inc_b"])
    assert (failed.verdict, failed.measured) == ("failed", 2)
    assert "inc_a, inc_b" in failed.reason


def test_rollback_validated_needs_a_rollback_plan_in_evidence() -> None:
    assert rollback_gate("d" * 64, ["sbom"]).verdict == "passed"
    assert rollback_gate("d" * 64, ["rollback_plan"]).verdict == "failed"
    assert rollback_gate(None, ["rollback_plan"]).verdict == "failed"


def test_evidence_gate_names_missing_parts() -> None:
    assert evidence_gate("d" * 64, [], 1).verdict == "passed"
    failed = evidence_gate("d" * 64, ["sbom", "scan_report"], 1)
    assert failed.verdict == "failed" and "missing sbom, scan_report" in failed.reason
    assert evidence_gate(None, ["sbom"], 2).reason.startswith("no evidence pack for ring 2")


@pytest.mark.parametrize(
    ("state", "target", "verdict"),
    [
        ("packaged", 0, "passed"),
        ("requested", 0, "failed"),
        ("staged", 1, "failed"),
        ("approved", 1, "passed"),
        ("published", 4, "passed"),
        ("retired", 0, "failed"),
    ],
)
def test_version_state_per_ring(state: str, target: int, verdict: str) -> None:
    assert version_gate(state, target).verdict == verdict


def test_cab_gate() -> None:
    assert cab_gate(False, "not needed", None).verdict == "passed"
    assert cab_gate(True, "risk 51", "apr_1").verdict == "passed"
    waiting = cab_gate(True, "risk 51", None)
    assert waiting.verdict == "failed" and waiting.reason.startswith("waiting for CAB approval")
    assert waiting.kind == "readiness"


def test_schedule_gate() -> None:
    assert schedule_gate({}, NOW).verdict == "passed"
    later = (NOW + timedelta(hours=1)).isoformat()
    assert schedule_gate({"start_at": later, "windows": []}, NOW).verdict == "failed"
    window = {"start": (NOW - timedelta(hours=1)).isoformat(), "end": later}
    assert schedule_gate({"windows": [window]}, NOW).verdict == "passed"
    tomorrow = {"start": later, "end": (NOW + timedelta(hours=2)).isoformat()}
    closed = schedule_gate({"windows": [tomorrow]}, NOW)
    assert closed.verdict == "failed" and "the next opens at" in closed.reason


def test_targets_for_rings_without_their_own_setting() -> None:
    settings = ControlPlaneSettings()
    assert success_target(settings.gate_success_rate, 1) == 0.98
    assert success_target(settings.gate_success_rate, 0) == 0.99  # held to the strictest
    assert min_reports(settings.gate_min_devices, 0) == 1


def test_promotion_decisions() -> None:
    passed = gate("install_success_rate", "health", "passed")
    assert decide_promotion([passed]).action == "promote"
    waiting = gate("install_success_rate", "health", "inconclusive", waiting_for=15)
    decision = decide_promotion([waiting, gate("schedule", "readiness", "passed")])
    assert (decision.action, decision.waiting_for) == ("wait", 15)
    assert decision.message == "inconclusive: waiting for 15 more devices"
    cab = gate("cab_approval", "readiness", "failed")
    assert decide_promotion([passed, cab]).action == "refuse"
    assert decide_promotion([waiting, cab]).action == "refuse"
    unhealthy = gate("no_open_incident", "health", "failed")
    decision = decide_promotion([unhealthy, cab])
    assert decision.action == "pause" and decision.failed == ("no_open_incident", "cab_approval")


def test_status_follows_argo_phases() -> None:
    passed = gate("install_success_rate", "health", "passed")
    waiting = gate("install_success_rate", "health", "inconclusive")
    failed = gate("install_success_rate", "health", "failed")
    cab = gate("cab_approval", "readiness", "failed")
    assert status_for("active", [passed, cab]) == "Healthy"  # paperwork is not ill health
    assert status_for("active", [waiting]) == "Progressing"
    assert status_for("active", []) == "Progressing"
    assert status_for("active", [failed]) == "Degraded"
    assert status_for("paused", [passed]) == "Paused"
    assert status_for("rolled_back", [passed]) == "Degraded"
    assert status_for("completed", []) == "Healthy"
