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
from operator import itemgetter
from typing import Any, Final

from controlplane.effective import EffectivePin, EffectivePolicy, EffectiveRule, Origin, PackageKey
from controlplane.versions import VersionRange, parse_range, version_key

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
_KEY: Final = itemgetter(0, 1)
_MANAGER: Final = itemgetter(0)
_NAME: Final = itemgetter(1)


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
    policy: EffectivePolicy | PolicyChecker | None,
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
        policy: the device's effective policy (or a checker prepared from it, when many
            devices share it); None when no valid bundle applies.
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
    checker = policy
    if isinstance(policy, PolicyChecker):
        policy = policy.policy
    version = policy.version if policy is not None else ""
    if checker is None:
        return _unknown("no valid policy applies to this device" + suffix, version)
    if inventory is None or last_checkin_at is None:
        return _unknown("the device has never reported an inventory" + suffix, version)
    if now - last_checkin_at > stale_after:
        return _unknown(
            f"last check-in {last_checkin_at.isoformat(timespec='seconds')} is older than "
            f"{_days(stale_after)}" + suffix,
            version,
        )
    findings = find_drift(checker, inventory, managers_origin=managers_origin)
    if not findings:
        return Evaluation("compliant", f"no drift against {version}"[:REASON_MAX], version, ())
    counts = Counter(f.category for f in findings)
    state = "non_compliant" if BLOCKING & counts.keys() else "warning"
    listed = ", ".join(f"{c} {counts[c]}" for c in CATEGORIES if c in counts)
    noun = "violation" if len(findings) == 1 else "violations"
    reason = f"{len(findings)} {noun} ({listed}){suffix}"
    return Evaluation(state, _clip(reason), version, findings)


def find_drift(
    policy: EffectivePolicy | PolicyChecker,
    inventory: Sequence[InventoryRow],
    *,
    managers_origin: Origin | None = None,
) -> tuple[Finding, ...]:
    """Every violation of ``policy`` by ``inventory``, ordered by severity then package."""
    checker = policy if isinstance(policy, PolicyChecker) else PolicyChecker(policy)
    return checker.find(inventory, managers_origin=managers_origin)


type _Check = tuple[str, PackageKey, str, str, VersionRange | None, dict[str, bool], EffectiveRule]
"""name, key, manager, effect, parsed range, verdict per installed version, the rule."""


class PolicyChecker:
    """An effective policy prepared for checking many inventories.

    A full recompute checks every device of a fleet against a few distinct policies, so the
    work per device is kept to one dictionary build over its inventory plus a lookup per rule;
    range verdicts are memoized per installed version, since a fleet repeats a handful of
    versions per package.
    """

    def __init__(self, policy: EffectivePolicy) -> None:
        self.policy = policy
        # Allow rules without a range can never drift; they matter only for default deny.
        self._checks: list[_Check] = [
            (
                r.name,
                (r.manager, r.name),
                r.manager,
                r.effect,
                None if r.versions is None else parse_range(r.versions),
                {},
                r,
            )
            for r in policy.rules.values()
            if r.effect != "allow" or r.versions is not None
        ]
        self._pins = list(policy.pins.values())
        self._expected_managers = "managers " + ", ".join(sorted(policy.managed_managers))

    def find(
        self, inventory: Sequence[InventoryRow], *, managers_origin: Origin | None = None
    ) -> tuple[Finding, ...]:
        """Every violation by ``inventory``, ordered by severity then package."""
        policy = self.policy
        # Keyed by name alone when names are unique (the usual case): building this map is
        # the one step that touches every package, and a string key is cheaper than a tuple.
        index: dict[Any, InventoryRow] = dict(zip(map(_NAME, inventory), inventory, strict=True))
        by_name = len(index) == len(inventory)
        if not by_name:
            index = dict(zip(map(_KEY, inventory), inventory, strict=True))
        out: list[Finding] = []
        for name, key, manager, effect, bounds, verdicts, rule in self._checks:
            row = index.get(name if by_name else key)
            if row is None or row[0] != manager:
                if effect == "require":
                    expected = rule.versions or "installed"
                    out.append(_found("missing_required", rule, "install", expected, "absent"))
                continue
            version = row[2]
            if bounds is None:
                if effect == "deny":
                    out.append(_found("present_denied", rule, "uninstall", "absent", version))
                continue
            inside = verdicts.get(version)
            if inside is None:
                inside = verdicts[version] = bounds.contains(version)
            if effect == "deny":
                if inside:
                    expected = f"not {bounds.text}"
                    out.append(_found("present_denied", rule, "uninstall", expected, version))
            elif not inside:
                # A local pin would keep an upgrade from moving the package, so it goes first;
                # an effective pin is reported separately as pin_mismatch.
                action = "unpin" if row[3] and key not in policy.pins else "upgrade"
                out.append(_found("version_out_of_range", rule, action, bounds.text, version))
        for pin in self._pins:
            row = index.get(pin.name if by_name else (pin.manager, pin.name))
            if row is None or row[0] != pin.manager:
                continue
            version = str(row[2])
            if not row[3]:
                actual = f"unpinned at {version}"
            elif version != pin.version and version_key(version) != version_key(pin.version):
                actual = f"pinned at {version}"
            else:
                continue
            out.append(_found("pin_mismatch", pin, "pin", f"pinned at {pin.version}", actual))
        managed = policy.managed_managers
        if managed:
            per_manager = Counter(map(_MANAGER, inventory))
            for manager in sorted(per_manager.keys() - managed):
                count = per_manager[manager]
                actual = f"{count} package" if count == 1 else f"{count} packages"
                expected = self._expected_managers
                out.append(
                    Finding(
                        "unmanaged_toolchain",
                        manager,
                        ANY_PACKAGE,
                        "uninstall",
                        expected,
                        actual,
                        managers_origin,
                    )
                )
        if policy.default_action == "deny":
            installed = dict(zip(map(_KEY, inventory), inventory, strict=True))
            for manager, name in installed.keys() - policy.rules.keys():
                # Packages of an unmanaged manager are one unmanaged_toolchain finding already.
                if managed and manager not in managed:
                    continue
                version = str(installed[manager, name][2])
                out.append(
                    Finding(
                        "present_denied",
                        manager,
                        name,
                        "uninstall",
                        "absent (default deny)",
                        version,
                        policy.default_origin,
                    )
                )
        out.sort(key=_order)
        return tuple(out)


def _found(
    category: str, rule: EffectiveRule | EffectivePin, action: str, expected: str, actual: str
) -> Finding:
    return Finding(category, rule.manager, rule.name, action, expected, actual, rule.origin)


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
