"""Drift evaluation as pure functions: each category, each state, with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.drift import Evaluation, evaluate
from controlplane.effective import EffectivePolicy, Origin, ScopeInfo, resolve
from controlplane.policy_model import PolicyBundle

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
WEEK = timedelta(days=7)
ORG = ScopeInfo("scp_org", "organization", "/scp_org/")
TEAM = ScopeInfo("scp_team", "team", "/scp_org/scp_team/")


def policy(team: dict[str, Any] | None = None, **org: Any) -> EffectivePolicy:
    """An effective policy from an organization bundle (and optionally a team bundle)."""
    bundles = [PolicyBundle(policy_id="base", policy_version=3, scope_bindings=["scp_org"], **org)]
    if team is not None:
        bundles.append(
            PolicyBundle(policy_id="team", policy_version=1, scope_bindings=["scp_team"], **team)
        )
    effective = resolve(bundles, [ORG, TEAM])
    assert effective is not None
    return effective


def run(
    effective: EffectivePolicy | None,
    inventory: list[list[Any]] | None,
    *,
    checkin: datetime | None = NOW - timedelta(hours=2),
    **kw: Any,
) -> Evaluation:
    return evaluate(effective, inventory, last_checkin_at=checkin, now=NOW, stale_after=WEEK, **kw)


def only(result: Evaluation) -> dict[str, Any]:
    assert len(result.findings) == 1, result.findings
    return result.findings[0].as_dict()


BASE_ORIGIN = {
    "scope_id": "scp_org",
    "level": "organization",
    "policy_id": "base",
    "policy_version": 3,
}


def test_no_drift_is_compliant() -> None:
    p = policy(
        required_packages=[{"manager": "brew", "name": "git", "versions": ">=2.40"}],
        allowed_packages=[{"manager": "brew", "name": "jq"}],
    )
    result = run(p, [["brew", "git", "2.47.1", False], ["brew", "jq", "1.7", False]])
    assert result.state == "compliant"
    assert result.findings == ()
    assert result.policy_version == "base@3"
    assert result.reason == "no drift against base@3"


def test_missing_required_is_non_compliant() -> None:
    p = policy(required_packages=[{"manager": "brew", "name": "git", "versions": ">=2.40"}])
    result = run(p, [["brew", "jq", "1.7", False]])
    assert result.state == "non_compliant"
    assert only(result) == {
        "category": "missing_required",
        "manager": "brew",
        "package": "git",
        "action": "install",
        "expected": ">=2.40",
        "actual": "absent",
        "origin": BASE_ORIGIN,
    }
    assert result.reason == "1 violation (missing_required 1)"


def test_required_outside_its_range_is_out_of_range_not_missing() -> None:
    p = policy(required_packages=[{"manager": "brew", "name": "git", "versions": ">=2.40"}])
    result = run(p, [["brew", "git", "2.39.0", False]])
    assert result.state == "warning"
    finding = only(result)
    assert finding["category"] == "version_out_of_range"
    assert (finding["action"], finding["expected"], finding["actual"]) == (
        "upgrade",
        ">=2.40",
        "2.39.0",
    )


@pytest.mark.parametrize(
    ("versions", "installed", "drifts"),
    [(None, "1.0", True), ("<2", "1.9", True), ("<2", "2.0", False)],
)
def test_present_denied(versions: str | None, installed: str, drifts: bool) -> None:
    p = policy(denied_packages=[{"manager": "pip", "name": "leftpad", "versions": versions}])
    result = run(p, [["pip", "leftpad", installed, False]])
    if not drifts:
        assert result.state == "compliant"
        return
    assert result.state == "non_compliant"
    finding = only(result)
    assert (finding["category"], finding["action"], finding["actual"]) == (
        "present_denied",
        "uninstall",
        installed,
    )
    assert finding["expected"] == ("absent" if versions is None else f"not {versions}")


def test_default_deny_flags_unnamed_packages_with_the_default_origin() -> None:
    p = policy(
        allowed_packages=[{"manager": "brew", "name": "jq"}],
        default_package_action="deny",
    )
    result = run(p, [["brew", "jq", "1.7", False], ["brew", "wget", "1.24", False]])
    assert result.state == "non_compliant"
    finding = only(result)
    assert (finding["category"], finding["package"], finding["expected"]) == (
        "present_denied",
        "wget",
        "absent (default deny)",
    )
    assert finding["origin"] == BASE_ORIGIN


def test_version_out_of_range_of_an_allow_rule_is_a_warning() -> None:
    p = policy(allowed_packages=[{"manager": "npm", "name": "typescript", "versions": ">=5,<6"}])
    result = run(p, [["npm", "typescript", "4.9.5", False]])
    assert result.state == "warning"
    assert only(result)["action"] == "upgrade"


def test_a_local_pin_outside_the_range_must_be_unpinned_first() -> None:
    p = policy(allowed_packages=[{"manager": "npm", "name": "typescript", "versions": ">=5"}])
    assert only(run(p, [["npm", "typescript", "4.9.5", True]]))["action"] == "unpin"


@pytest.mark.parametrize(
    ("installed", "pinned", "actual"),
    [("3.12.7", False, "unpinned at 3.12.7"), ("3.11.9", True, "pinned at 3.11.9")],
)
def test_pin_mismatch(installed: str, pinned: bool, actual: str) -> None:
    p = policy(pin_rules=[{"manager": "brew", "name": "python", "version": "3.12.7"}])
    result = run(p, [["brew", "python", installed, pinned]])
    assert result.state == "warning"
    finding = only(result)
    assert (finding["category"], finding["action"], finding["expected"], finding["actual"]) == (
        "pin_mismatch",
        "pin",
        "pinned at 3.12.7",
        actual,
    )


def test_pin_held_or_package_absent_is_no_pin_drift() -> None:
    p = policy(pin_rules=[{"manager": "brew", "name": "python", "version": "3.12.7"}])
    assert run(p, [["brew", "python", "3.12.7", True]]).state == "compliant"
    assert run(p, [["brew", "jq", "1.7", False]]).state == "compliant"


def test_unmanaged_toolchain_is_one_finding_per_manager() -> None:
    p = policy(managed_managers=["brew"], default_package_action="deny")
    origin = Origin("scp_org", "organization", "base", 3)
    inventory = [
        ["brew", "jq", "1.7", False],
        ["pip", "requests", "2.32", False],
        ["pip", "rich", "13.9", False],
        ["npm", "left-pad", "1.3.0", False],
    ]
    result = run(p, inventory, managers_origin=origin)
    by_manager = {f.manager: f.as_dict() for f in result.findings if f.manager != "brew"}
    assert set(by_manager) == {"pip", "npm"}
    pip = by_manager["pip"]
    assert (pip["category"], pip["package"], pip["action"], pip["actual"]) == (
        "unmanaged_toolchain",
        "*",
        "uninstall",
        "2 packages",
    )
    assert pip["expected"] == "managers brew" and pip["origin"] == BASE_ORIGIN
    # The unmanaged pip and npm packages are not also reported one by one as default-denied.
    assert [f.package for f in result.findings if f.category == "present_denied"] == ["jq"]


def test_only_warnings_is_warning_any_blocking_is_non_compliant() -> None:
    p = policy(
        required_packages=[{"manager": "brew", "name": "git"}],
        pin_rules=[{"manager": "brew", "name": "python", "version": "3.12.7"}],
        managed_managers=["brew"],
    )
    warned = run(p, [["brew", "git", "2.47", False], ["brew", "python", "3.12.7", False]])
    assert warned.state == "warning"
    both = run(p, [["brew", "python", "3.12.7", False], ["pip", "rich", "13", False]])
    assert both.state == "non_compliant"
    assert [f.category for f in both.findings] == [
        "missing_required",
        "pin_mismatch",
        "unmanaged_toolchain",
    ]
    assert both.reason == (
        "3 violations (missing_required 1, pin_mismatch 1, unmanaged_toolchain 1)"
    )


def test_more_specific_scope_attributes_the_finding() -> None:
    p = policy(
        team={"denied_packages": [{"manager": "brew", "name": "telnet"}]},
        allowed_packages=[{"manager": "brew", "name": "telnet"}],
    )
    finding = only(run(p, [["brew", "telnet", "0.17", False]]))
    assert finding["category"] == "present_denied"
    assert finding["origin"] == {
        "scope_id": "scp_team",
        "level": "team",
        "policy_id": "team",
        "policy_version": 1,
    }


def test_unknown_without_a_valid_policy() -> None:
    result = run(None, [["brew", "git", "2.47", False]])
    assert (result.state, result.policy_version, result.findings) == ("unknown", "", ())
    assert result.reason == "no valid policy applies to this device"


def test_unknown_when_never_reported() -> None:
    p = policy(required_packages=[{"manager": "brew", "name": "git"}])
    result = run(p, None, checkin=None)
    assert result.state == "unknown"
    assert result.reason == "the device has never reported an inventory"
    assert result.findings == ()


def test_unknown_when_check_in_is_stale() -> None:
    p = policy(required_packages=[{"manager": "brew", "name": "git"}])
    fresh = run(p, [], checkin=NOW - WEEK)
    assert fresh.state == "non_compliant"
    stale = run(p, [], checkin=NOW - WEEK - timedelta(seconds=1))
    assert stale.state == "unknown"
    assert stale.reason == "last check-in 2026-10-26T09:29:59+00:00 is older than 7 days"
    assert stale.findings == ()


def test_unmanaged_device_is_evaluated_for_reporting_only() -> None:
    p = policy(required_packages=[{"manager": "brew", "name": "git"}])
    result = run(p, [], unmanaged=True)
    assert result.state == "non_compliant"
    assert result.reason.endswith("; reporting only (unmanaged device)")
