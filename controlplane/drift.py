"""Control plane drift: compare one device's inventory with its effective policy (seed 001 §5).

Pure functions, no I/O: ``controlplane.compliance`` feeds them rows read from the database and
stores what they return. The five drift categories and what each violation asks for:

    category               when                                              action
    missing_required       a ``require`` rule's package is absent            install
    present_denied         a ``deny`` rule's package is installed (within    uninstall
                           its range, if it has one), or any package no rule
                           names while the default package action is deny
    version_out_of_range   a ``require``/``allow`` rule's package is          upgrade (unpin
                           installed outside the rule's ``versions``         first if pinned)
    pin_mismatch           an effective pin's package is installed but not    pin
                           pinned, or pinned at another version
    unmanaged_toolchain    the policy names managed managers and packages     uninstall
                           of another manager are installed (one finding
                           per manager, not per package)

States: ``non_compliant`` when any missing_required or present_denied finding exists,
``warning`` when only the other categories do, ``compliant`` when none does, and ``unknown``
when there is no valid policy, no inventory yet, or the last check-in is stale.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from controlplane.effective import EffectivePolicy, Origin
from controlplane.versions import parse_range, version_key

CATEGORIES: Final = (
    "missing_required",
    "present_denied",
    "version_out_of_range",
    "pin_mismatch",
    "unmanaged_toolchain",
)
"""Drift categories, most severe first."""
STATES: Final = ("compliant", "warning", "non_compliant", "unknown")
"""Compliance states."""
BLOCKING: Final = frozenset({"missing_required", "present_denied"})
"""Categories that make a device non-compliant rather than merely warned."""
ANY_PACKAGE: Final = "*"
"""Package name of an ``unmanaged_toolchain`` finding, which concerns a whole manager."""
REASON_MAX: Final = 300
"""Length of the stored reason column."""

type InventoryRow = Sequence[Any]
"""``[manager, name, version, pinned]`` as stored in ``Device.inventory``."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: what drifted, what would fix it and which rule says so."""

    category: str
    """One of ``CATEGORIES``."""
    manager: str
    """Package manager the finding concerns."""
    package: str
    """Package name, or ``*`` for an unmanaged toolchain."""
    action: str
    """Remediation action that would resolve it: install, uninstall, upgrade, pin or unpin."""
    expected: str
    """What the policy wants, in words (``>=1.2,<2``, ``absent``, ``pinned at 3.1``…)."""
    actual: str
    """What the device has (a version, ``absent``, ``unpinned at 3.0``…)."""
    origin: Origin | None
    """Scope, bundle and version of the deciding rule; None only when no bundle names it."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form, stored in the compliance record and returned by the API."""
        return {
            "category": self.category,
            "manager": self.manager,
            "package": self.package,
            "action": self.action,
            "expected": self.expected,
            "actual": self.actual,
            "origin": None if self.origin is None else self.origin.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of evaluating one device."""

    state: str
    """One of ``STATES``."""
    reason: str
    """A sentence saying why the device is in that state (at most 300 characters)."""
    policy_version: str
    """``EffectivePolicy.version`` that was evaluated; empty when there was none."""
    findings: tuple[Finding, ...]
    """Violations, ordered by category severity, then manager and package."""

    @property
    def categories(self) -> frozenset[str]:
        """The distinct categories among the findings."""
        return frozenset(f.category for f in self.findings)


def evaluate(
    policy: EffectivePolicy | None,
    inventory: Sequence[InventoryRow] | None,
    *,
    last_checkin_at: datetime | None,
    now: datetime,
    stale_after: timedelta,
    unmanaged: bool = False,
    managers_origin: Origin | None = None,
) -> Evaluation:
    """Evaluate a device.

    Args:
        policy: the device's effective policy; None when no valid bundle applies.
        inventory: installed packages; None when the device never reported one.
        last_checkin_at: time of the last inventory report.
        now: the evaluation time (a parameter so tests need no sleeping).
        stale_after: a check-in older than this makes the state ``unknown``.
        unmanaged: the device is ``unmanaged``: evaluated for reporting only, which the
            reason says.
        managers_origin: origin of the managed-managers list, for attributing
            ``unmanaged_toolchain`` findings (``EffectivePolicy`` does not carry it).

    Returns:
        The state, its reason and the findings.
    """
    suffix = "; reporting only (unmanaged device)" if unmanaged else ""
    version = policy.version if policy is not None else ""
    if policy is None:
        return _unknown("no valid policy applies to this device" + suffix, version)
    if inventory is None or last_checkin_at is None:
        return _unknown("the device has never reported an inventory" + suffix, version)
    if now - last_checkin_at > stale_after:
        return _unknown(
            f"last check-in {last_checkin_at.isoformat(timespec='seconds')} is older than "
            f"{_days(stale_after)}" + suffix,
            version,
        )
    findings = find_drift(policy, inventory, managers_origin=managers_origin)
    if not findings:
        return Evaluation("compliant", f"no drift against {version}"[:REASON_MAX], version, ())
    counts = Counter(f.category for f in findings)
    state = "non_compliant" if BLOCKING & counts.keys() else "warning"
    listed = ", ".join(f"{c} ×{counts[c]}" for c in CATEGORIES if c in counts)
    noun = "violation" if len(findings) == 1 else "violations"
    reason = f"{len(findings)} {noun}: {listed}{suffix}"
    return Evaluation(state, _clip(reason), version, findings)


def find_drift(
    policy: EffectivePolicy,
    inventory: Sequence[InventoryRow],
    *,
    managers_origin: Origin | None = None,
) -> tuple[Finding, ...]:
    """Every violation of ``policy`` by ``inventory``, ordered by severity then package.

    Work is proportional to the rules plus one dictionary build over the inventory, because a
    full recompute runs this for every device of a fleet.
    """
    installed = {(row[0], row[1]): row for row in inventory}
    managed = policy.managed_managers
    out: list[Finding] = []
    rules = policy.rules
    for key in rules.keys() & installed.keys():
        rule = rules[key]
        row = installed[key]
        manager, name, installed_version, pinned = row[0], row[1], str(row[2]), bool(row[3])
        if rule.effect == "deny":
            if rule.versions is None or parse_range(rule.versions).contains(installed_version):
                expected = "absent" if rule.versions is None else f"not {rule.versions}"
                out.append(
                    Finding("present_denied", manager, name, "uninstall", expected,
                            installed_version, rule.origin)
                )
        elif rule.versions is not None and not parse_range(rule.versions).contains(
            installed_version
        ):
            # A local pin would keep an upgrade from moving the package, so it goes first;
            # an effective pin is reported separately as pin_mismatch.
            action = "unpin" if pinned and key not in policy.pins else "upgrade"
            out.append(
                Finding("version_out_of_range", manager, name, action, rule.versions,
                        installed_version, rule.origin)
            )
    for rule in policy.required:
        if (rule.manager, rule.name) not in installed:
            out.append(
                Finding("missing_required", rule.manager, rule.name, "install",
                        rule.versions or "installed", "absent", rule.origin)
            )
    for key in policy.pins.keys() & installed.keys():
        pin = policy.pins[key]
        row = installed[key]
        installed_version, pinned = str(row[2]), bool(row[3])
        if not pinned:
            actual = f"unpinned at {installed_version}"
        elif version_key(installed_version) != version_key(pin.version):
            actual = f"pinned at {installed_version}"
        else:
            continue
        out.append(
            Finding("pin_mismatch", pin.manager, pin.name, "pin", f"pinned at {pin.version}",
                    actual, pin.origin)
        )
    if managed:
        per_manager = Counter(row[0] for row in inventory if row[0] not in managed)
        expected = "managers " + ", ".join(sorted(managed))
        for manager, count in per_manager.items():
            noun = "package" if count == 1 else "packages"
            out.append(
                Finding("unmanaged_toolchain", manager, ANY_PACKAGE, "uninstall", expected,
                        f"{count} {noun}", managers_origin)
            )
    if policy.default_action == "deny":
        for key in installed.keys() - rules.keys():
            # Packages of an unmanaged manager are one unmanaged_toolchain finding already.
            if managed and key[0] not in managed:
                continue
            out.append(
                Finding("present_denied", key[0], key[1], "uninstall", "absent (default deny)",
                        str(installed[key][2]), policy.default_origin)
            )
    out.sort(key=_order)
    return tuple(out)


_RANK: Final = {category: rank for rank, category in enumerate(CATEGORIES)}


def _order(finding: Finding) -> tuple[int, str, str]:
    return _RANK[finding.category], finding.manager, finding.package


def _unknown(reason: str, version: str) -> Evaluation:
    return Evaluation("unknown", _clip(reason), version, ())


def _clip(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 1] + "…"


def _days(span: timedelta) -> str:
    if span.total_seconds() % 86400 == 0:
        days = int(span.total_seconds() // 86400)
        return f"{days} day" if days == 1 else f"{days} days"
    return str(span)
