"""Enforcement decisions and offline snapshots, as pure functions (no server, no database)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.effective import EffectivePolicy, ScopeInfo, resolve
from controlplane.enforcement import (
    NOTHING_INSTALLED,
    EnforcementRequest,
    Installed,
    check,
)
from controlplane.policy_model import PolicyBundle
from controlplane.signing import Signer
from controlplane.snapshot import SnapshotError, issue_snapshot, verify_snapshot

ORG = ScopeInfo("org", "organization", "/org/")
TEAM = ScopeInfo("team", "team", "/org/team/")
# A Wednesday, 10:00 UTC.
WED_10 = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)


def policy(*bundles: dict[str, Any]) -> EffectivePolicy:
    """Resolve bundles bound to the organization or the team, as seen from the team."""
    resolved = resolve([PolicyBundle.model_validate(b) for b in bundles], [ORG, TEAM])
    assert resolved is not None
    return resolved


BASE = {
    "policy_id": "base",
    "policy_version": 3,
    "scope_bindings": ["org"],
    "allowed_packages": [
        {"manager": "brew", "name": "git", "versions": ">=2.40"},
        {"manager": "brew", "name": "jq"},
        {"manager": "brew", "name": "telnet"},
    ],
    "required_packages": [{"manager": "brew", "name": "osquery"}],
    "denied_packages": [
        {"manager": "brew", "name": "telnet"},
        {"manager": "pip", "name": "requests", "versions": "<2.20"},
    ],
    "pin_rules": [
        {"manager": "brew", "name": "python@3.12", "version": "3.12.7"},
        {"manager": "brew", "name": "node", "version": "22.1.0", "include_in_upgrade_all": True},
    ],
    "guarded_action_rules": [
        {"action": "upgrade", "manager": "softwareupdate"},
        {"action": "uninstall", "name": "osquery"},
    ],
}
TEAM_STRICT = {
    "policy_id": "team-strict",
    "policy_version": 1,
    "scope_bindings": ["team"],
    "default_package_action": "deny",
    "allowed_packages": [{"manager": "brew", "name": "wget"}],
    "upgrade_windows": [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00"},
        {"days": ["sat"], "start": "22:00", "end": "02:00", "timezone": "Europe/Berlin"},
    ],
}
INSTALLED = Installed.from_rows(
    [
        ["brew", "git", "2.44.0", False],
        ["brew", "ripgrep", "14.1.0", True],
        ["brew", "node", "22.1.0", True],
        ["brew", "python@3.12", "3.12.7", True],
        ["softwareupdate", "macOS", "15.1", False],
    ]
)


def ask(
    pol: EffectivePolicy | None,
    mode: str,
    action: str,
    package: str | None = None,
    version: str | None = None,
    *,
    manager: str = "brew",
    now: datetime = WED_10,
    installed: Installed = INSTALLED,
) -> Any:
    return check(pol, mode, EnforcementRequest(manager, action, package, version), installed, now)


# --- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["install", "uninstall", "upgrade_all", "list", "unpin"])
def test_unmanaged_allows_without_evaluating(action: str) -> None:
    d = ask(policy(BASE), "unmanaged", action, "telnet")
    assert d.allowed and not d.enforced and not d.would_deny and not d.requires_confirmation
    assert d.rule.kind == "mode" and "not evaluated" in d.reason
    assert d.policy_version is None


def test_unmanaged_upgrade_all_still_skips_local_pins() -> None:
    d = ask(None, "unmanaged", "upgrade_all")
    assert d.allowed and d.excluded_packages == ("node", "python@3.12", "ripgrep")


@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        ("list", True),
        ("search", True),
        ("info", True),
        ("install", False),
        ("uninstall", False),
        ("upgrade", False),
        ("upgrade_all", False),
        ("pin", False),
        ("unpin", False),
    ],
)
def test_enforced_without_snapshot(action: str, allowed: bool) -> None:
    d = ask(None, "managed-enforced", action, None if action == "list" else "jq")
    assert d.allowed is allowed and d.enforced and d.would_deny is not allowed
    assert d.rule.kind == "no_policy" and "no valid policy snapshot" in d.reason


def test_readonly_without_snapshot_reports_what_enforced_would_block() -> None:
    d = ask(None, "managed-readonly", "install", "jq")
    assert d.allowed and not d.enforced and d.would_deny
    assert "does not block" in d.reason and "no valid policy snapshot" in d.reason


def test_readonly_never_blocks_but_reports_the_denial() -> None:
    d = ask(policy(BASE), "managed-readonly", "install", "telnet")
    assert d.allowed and not d.enforced and d.would_deny
    assert d.rule.kind == "deny" and d.rule.origin is not None
    assert "does not block" in d.reason and "base v3" in d.reason


def test_unknown_mode_is_treated_as_enforced() -> None:
    d = ask(policy(BASE), "managed-enforcd", "install", "telnet")
    assert not d.allowed and d.enforced


# --- each action kind under managed-enforced -----------------------------------------------------


@pytest.mark.parametrize(
    ("action", "package", "version", "manager", "allowed", "kind"),
    [
        # read-only actions are never restricted
        ("list", None, None, "brew", True, "read_only"),
        ("search", "telnet", None, "brew", True, "read_only"),
        ("info", "telnet", None, "brew", True, "read_only"),
        # deny beats allow at the same scope; denied without a range means any version
        ("install", "telnet", "0.17", "brew", False, "deny"),
        ("upgrade", "telnet", "0.18", "brew", False, "deny"),
        # a denied range: inside it is denied, outside it the default decides
        ("install", "requests", "2.19.1", "pip", False, "deny"),
        ("install", "requests", "2.32.0", "pip", True, "default"),
        ("install", "requests", None, "pip", False, "deny"),
        # an allowed range
        ("install", "git", "2.44.0", "brew", True, "allow"),
        ("install", "git", "2.39.0", "brew", False, "allow"),
        ("install", "git", None, "brew", False, "allow"),
        ("upgrade", "git", "2.45.0", "brew", True, "allow"),
        ("install", "jq", None, "brew", True, "allow"),
        # required packages: installable, not removable
        ("install", "osquery", "5.12", "brew", True, "require"),
        ("uninstall", "osquery", None, "brew", False, "require"),
        ("uninstall", "telnet", None, "brew", True, "deny"),
        ("uninstall", "jq", None, "brew", True, "unrestricted"),
        # no rule: the default package action (allow unless a bundle says deny)
        ("install", "htop", "3.3", "brew", True, "default"),
        # pins
        ("pin", "python@3.12", "3.12.7", "brew", True, "pin"),
        ("pin", "python@3.12", "3.12.8", "brew", False, "pin"),
        ("pin", "python@3.12", None, "brew", True, "pin"),  # installed version is the pin
        ("unpin", "python@3.12", None, "brew", False, "pin"),
        ("pin", "jq", "1.7", "brew", True, "unrestricted"),
        ("unpin", "ripgrep", None, "brew", True, "unrestricted"),
        ("upgrade", "python@3.12", "3.13.0", "brew", False, "pin"),
        ("upgrade", "python@3.12", None, "brew", False, "pin"),
        ("install", "python@3.12", "3.12.7", "brew", True, "default"),
        # a request without the package it needs
        ("install", None, None, "brew", False, "request"),
    ],
)
def test_enforced_actions(
    action: str, package: str | None, version: str | None, manager: str, allowed: bool, kind: str
) -> None:
    d = ask(policy(BASE), "managed-enforced", action, package, version, manager=manager)
    assert (d.allowed, d.rule.kind) == (allowed, kind), d.reason
    assert d.enforced and d.would_deny is not allowed
    assert d.policy_version == "base@3"
    if kind in ("deny", "allow", "require", "pin"):
        assert d.rule.origin is not None and d.rule.origin.policy_id == "base"
        assert "base v3 at organization org" in d.reason


def test_deny_names_rule_and_origin() -> None:
    d = ask(policy(BASE), "managed-enforced", "install", "telnet", "0.17")
    assert d.reason == "brew/telnet is denied by policy base v3 at organization org"
    assert d.rule.as_dict() == {
        "kind": "deny",
        "origin": {
            "scope_id": "org",
            "level": "organization",
            "policy_id": "base",
            "policy_version": 3,
        },
        "detail": None,
    }


def test_more_specific_default_deny_and_its_origin() -> None:
    pol = policy(BASE, TEAM_STRICT)
    denied = ask(pol, "managed-enforced", "install", "htop", "3.3")
    assert not denied.allowed and denied.rule.kind == "default"
    assert denied.rule.origin is not None and denied.rule.origin.policy_id == "team-strict"
    assert "default package action is deny" in denied.reason
    allowed = ask(pol, "managed-enforced", "install", "wget", "1.24")
    assert allowed.allowed and allowed.rule.kind == "allow"
    builtin = ask(policy(BASE), "managed-enforced", "install", "htop", "3.3")
    assert builtin.allowed and builtin.rule.origin is None and "built-in default" in builtin.reason


# --- guards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["managed-readonly", "managed-enforced"])
def test_guarded_action_always_needs_confirmation(mode: str) -> None:
    d = ask(policy(BASE), mode, "upgrade", "macOS", "15.2", manager="softwareupdate")
    assert d.allowed and d.requires_confirmation and not d.would_deny
    assert d.confirmation_rule is not None and d.confirmation_rule.kind == "guard"
    assert "explicit confirmation" in d.reason


def test_guard_on_a_denied_action_still_reported_but_does_not_allow() -> None:
    d = ask(policy(BASE), "managed-enforced", "uninstall", "osquery")
    assert not d.allowed and d.requires_confirmation


def test_unguarded_action_needs_no_confirmation() -> None:
    d = ask(policy(BASE), "managed-enforced", "uninstall", "jq")
    assert d.allowed and not d.requires_confirmation and d.confirmation_rule is None


def test_upgrade_all_inherits_the_guard_of_a_package_it_would_upgrade() -> None:
    d = ask(policy(BASE), "managed-enforced", "upgrade_all", manager="softwareupdate")
    assert d.allowed and d.requires_confirmation
    plain = ask(policy(BASE), "managed-enforced", "upgrade_all")
    assert not plain.requires_confirmation


@pytest.mark.parametrize(
    ("guarded", "expected"),
    [
        ("git", True),  # installed and would be upgraded
        ("ripgrep", False),  # pinned on the device: upgrade_all skips it
        ("htop", False),  # not installed
    ],
)
def test_bulk_upgrade_guard_naming_a_package(guarded: str, expected: bool) -> None:
    guard = {"action": "upgrade_all", "manager": "brew", "name": guarded}
    pol = policy({**BASE, "guarded_action_rules": [guard]})
    d = ask(pol, "managed-enforced", "upgrade_all")
    assert d.requires_confirmation is expected


# --- upgrade_all and pins ----------------------------------------------------------------------


def test_upgrade_all_excludes_pins_unless_overridden() -> None:
    d = ask(policy(BASE), "managed-enforced", "upgrade_all")
    # ripgrep: pinned on the device; python@3.12: effective pin; node: pinned on the device,
    # but its effective pin sets include_in_upgrade_all, the explicit override.
    assert d.allowed and d.excluded_packages == ("python@3.12", "ripgrep")


def test_upgrade_all_excludes_effective_pins_the_inventory_does_not_show() -> None:
    d = ask(policy(BASE), "managed-enforced", "upgrade_all", installed=NOTHING_INSTALLED)
    assert d.excluded_packages == ("python@3.12",)


def test_upgrade_all_of_another_manager_excludes_nothing() -> None:
    d = ask(policy(BASE), "managed-enforced", "upgrade_all", manager="pip")
    assert d.allowed and d.excluded_packages == ()


def test_readonly_upgrade_all_lists_exclusions_too() -> None:
    d = ask(policy(BASE), "managed-readonly", "upgrade_all")
    assert d.excluded_packages == ("python@3.12", "ripgrep")


# --- upgrade windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "allowed"),
    [
        (WED_10, True),  # weekday 08:00-18:00 UTC
        (datetime(2026, 11, 18, 7, 59, tzinfo=UTC), False),
        (datetime(2026, 11, 18, 18, 0, tzinfo=UTC), False),  # the end is exclusive
        (datetime(2026, 11, 18, 17, 59, 59, tzinfo=UTC), True),
        # Saturday 22:00-02:00 Europe/Berlin (UTC+1 in November), spanning midnight
        (datetime(2026, 11, 21, 20, 59, tzinfo=UTC), False),  # Sat 21:59 Berlin
        (datetime(2026, 11, 21, 21, 0, tzinfo=UTC), True),  # Sat 22:00 Berlin
        (datetime(2026, 11, 21, 23, 30, tzinfo=UTC), True),  # Sun 00:30 Berlin
        (datetime(2026, 11, 22, 0, 59, tzinfo=UTC), True),  # Sun 01:59 Berlin
        (datetime(2026, 11, 22, 1, 0, tzinfo=UTC), False),  # Sun 02:00 Berlin
        (datetime(2026, 11, 22, 23, 30, tzinfo=UTC), False),  # Mon 00:30 Berlin: no Sun window
        (datetime(2026, 11, 20, 23, 30, tzinfo=UTC), False),  # Sat 00:30 Berlin: Fri not listed
        # A non-UTC caller clock means the same instant.
        (datetime(2026, 11, 18, 5, 0, tzinfo=timezone(timedelta(hours=-5))), True),
    ],
)
def test_upgrade_windows(now: datetime, allowed: bool) -> None:
    pol = policy(BASE, TEAM_STRICT)
    for action, package, version in (("upgrade", "wget", "1.25"), ("upgrade_all", None, None)):
        d = ask(pol, "managed-enforced", action, package, version, now=now)
        assert d.allowed is allowed, (action, now, d.reason)
        if not allowed or action == "upgrade_all":
            assert d.rule.kind == "upgrade_window"
            assert d.rule.origin is not None and d.rule.origin.policy_id == "team-strict"
        else:  # an allowed upgrade names the package rule that allows it
            assert d.rule.kind == "allow"


def test_window_does_not_restrict_installs() -> None:
    sunday_noon = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    d = ask(
        policy(BASE, TEAM_STRICT), "managed-enforced", "install", "wget", "1.25", now=sunday_noon
    )
    assert d.allowed


def test_rule_denial_is_reported_before_the_window() -> None:
    sunday_noon = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    d = ask(
        policy(BASE, TEAM_STRICT), "managed-enforced", "upgrade", "telnet", "1", now=sunday_noon
    )
    assert not d.allowed and d.rule.kind == "deny"


def test_decision_json_shape() -> None:
    d = ask(policy(BASE), "managed-enforced", "upgrade_all").as_dict()
    assert set(d) == {
        "allowed",
        "enforced",
        "requires_confirmation",
        "reason",
        "rule",
        "would_deny",
        "excluded_packages",
        "confirmation_rule",
        "policy_version",
    }
    assert d["excluded_packages"] == ["python@3.12", "ripgrep"]


# --- snapshots ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def _snapshot(signer: Signer, now: datetime = WED_10) -> dict[str, Any]:
    return issue_snapshot(
        signer,
        device_id="dev_1",
        tenant_id="ten_1",
        policy=policy(BASE, TEAM_STRICT),
        now=now,
        ttl=timedelta(days=30),
    )


def test_snapshot_round_trip(signer: Signer) -> None:
    envelope = _snapshot(signer)
    keys = {signer.key_id: signer.public_text}
    restored = verify_snapshot(envelope, keys, WED_10 + timedelta(days=1), device_id="dev_1")
    original = policy(BASE, TEAM_STRICT)
    assert restored.as_document() == original.as_document()
    # The restored policy decides exactly as the server's would.
    for action, package, version in (
        ("install", "telnet", "1"),
        ("upgrade_all", None, None),
        ("install", "htop", "3"),
    ):
        a = ask(restored, "managed-enforced", action, package, version)
        b = ask(original, "managed-enforced", action, package, version)
        assert a == b


def test_snapshot_rejects_tampering(signer: Signer) -> None:
    envelope = _snapshot(signer)
    tampered = copy.deepcopy(envelope)
    tampered["document"]["policy"]["default_package_action"] = "allow"
    with pytest.raises(SnapshotError, match="signature does not verify"):
        verify_snapshot(tampered, {signer.key_id: signer.public_text}, WED_10, device_id="dev_1")


def test_snapshot_rejects_a_wrong_key(signer: Signer) -> None:
    other = Signer(Ed25519PrivateKey.generate())
    envelope = _snapshot(signer)
    with pytest.raises(SnapshotError, match="unknown key id"):
        verify_snapshot(envelope, {other.key_id: other.public_text}, WED_10, device_id="dev_1")
    # The right key id bound to another key does not verify either.
    with pytest.raises(SnapshotError, match="does not verify"):
        verify_snapshot(envelope, {signer.key_id: other.public_text}, WED_10, device_id="dev_1")


def test_snapshot_rejects_expiry_and_future_issue(signer: Signer) -> None:
    envelope = _snapshot(signer)
    keys = {signer.key_id: signer.public_text}
    with pytest.raises(SnapshotError, match="expired"):
        verify_snapshot(envelope, keys, WED_10 + timedelta(days=30), device_id="dev_1")
    with pytest.raises(SnapshotError, match="future"):
        verify_snapshot(envelope, keys, WED_10 - timedelta(hours=1), device_id="dev_1")


def test_snapshot_rejects_another_device_or_tenant(signer: Signer) -> None:
    envelope = _snapshot(signer)
    keys = {signer.key_id: signer.public_text}
    with pytest.raises(SnapshotError, match="issued to device 'dev_1'"):
        verify_snapshot(envelope, keys, WED_10, device_id="dev_2")
    with pytest.raises(SnapshotError, match="another tenant"):
        verify_snapshot(envelope, keys, WED_10, device_id="dev_1", tenant_id="ten_2")


@pytest.mark.parametrize("envelope", [{}, {"document": {}}, {"document": 1, "signature": 2}, []])
def test_snapshot_rejects_malformed_envelopes(signer: Signer, envelope: Any) -> None:
    with pytest.raises(SnapshotError):
        verify_snapshot(envelope, {signer.key_id: signer.public_text}, WED_10, device_id="dev_1")


def test_signed_but_malformed_document_is_refused(signer: Signer) -> None:
    document = {"device_id": "dev_1", "tenant_id": "t", "issued_at": "yesterday"}
    envelope = {
        "document": document,
        "signature": {"alg": "Ed25519", "key_id": signer.key_id, "value": signer.sign(document)},
    }
    with pytest.raises(SnapshotError, match="malformed"):
        verify_snapshot(envelope, {signer.key_id: signer.public_text}, WED_10, device_id="dev_1")
