"""Control plane effective policy: resolve the bundles bound along a device's scopes (seed 001 §4).

Precedence: organization < department < team < environment < device group. For each package
the most specific level with any rule decides; at equal specificity deny beats require beats
allow. Every effective rule names its origin scope, bundle and version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.access import LEVELS
from controlplane.policy_model import GuardedActionRule, PolicyBundle, UpgradeWindow

type PackageKey = tuple[str, str]
Effect = Literal["require", "allow", "deny"]
_EFFECT_STRENGTH: dict[str, int] = {"deny": 3, "require": 2, "allow": 1}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an effective rule came from."""

    scope_id: str
    """Scope the bundle is bound to."""
    level: str
    """That scope's level."""
    policy_id: str
    """Bundle identifier."""
    policy_version: int
    """Bundle version."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope_id": self.scope_id,
            "level": self.level,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
        }


@dataclass(frozen=True, slots=True)
class EffectiveRule:
    """The one rule that governs a package on a device."""

    manager: str
    name: str
    effect: Effect
    versions: str | None
    origin: Origin


@dataclass(frozen=True, slots=True)
class EffectivePin:
    """The pin that governs a package."""

    manager: str
    name: str
    version: str
    include_in_upgrade_all: bool
    origin: Origin


@dataclass(frozen=True, slots=True)
class EffectiveGuard:
    """A guarded action rule and its origin (guards add up across scopes; none is overridden)."""

    rule: GuardedActionRule
    origin: Origin


@dataclass(frozen=True)
class EffectivePolicy:
    """A device's or scope's resolved policy, with provenance for every decision."""

    version: str
    """Bundles that contributed, as ``policy_id@version`` joined by commas."""
    rules: dict[PackageKey, EffectiveRule]
    pins: dict[PackageKey, EffectivePin]
    guards: tuple[EffectiveGuard, ...]
    upgrade_windows: tuple[UpgradeWindow, ...]
    upgrade_windows_origin: Origin | None
    remediation_mode: str
    remediation_origin: Origin | None
    default_action: str
    default_origin: Origin | None
    managed_managers: frozenset[str]
    required: tuple[EffectiveRule, ...] = field(default=())
    """The ``require`` rules, precomputed for drift evaluation."""

    def as_document(self) -> dict[str, Any]:
        """JSON form, used by the API and inside signed snapshots."""
        return {
            "policy_version": self.version,
            "rules": [
                {
                    "manager": r.manager,
                    "name": r.name,
                    "effect": r.effect,
                    "versions": r.versions,
                    "origin": r.origin.as_dict(),
                }
                for r in sorted(self.rules.values(), key=lambda r: (r.manager, r.name))
            ],
            "pins": [
                {
                    "manager": p.manager,
                    "name": p.name,
                    "version": p.version,
                    "include_in_upgrade_all": p.include_in_upgrade_all,
                    "origin": p.origin.as_dict(),
                }
                for p in sorted(self.pins.values(), key=lambda p: (p.manager, p.name))
            ],
            "guarded_action_rules": [
                {**g.rule.model_dump(mode="json"), "origin": g.origin.as_dict()}
                for g in self.guards
            ],
            "upgrade_windows": [w.model_dump(mode="json") for w in self.upgrade_windows],
            "upgrade_windows_origin": _origin(self.upgrade_windows_origin),
            "auto_remediation_mode": self.remediation_mode,
            "auto_remediation_origin": _origin(self.remediation_origin),
            "default_package_action": self.default_action,
            "default_package_action_origin": _origin(self.default_origin),
            "managed_managers": sorted(self.managed_managers),
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> EffectivePolicy:
        """Rebuild from ``as_document`` output (an endpoint agent reading its snapshot)."""

        def origin(d: Mapping[str, Any] | None) -> Origin | None:
            return None if d is None else Origin(**d)

        rules = {
            (r["manager"], r["name"]): EffectiveRule(
                r["manager"], r["name"], r["effect"], r["versions"], Origin(**r["origin"])
            )
            for r in doc["rules"]
        }
        pins = {
            (p["manager"], p["name"]): EffectivePin(
                p["manager"],
                p["name"],
                p["version"],
                p["include_in_upgrade_all"],
                Origin(**p["origin"]),
            )
            for p in doc["pins"]
        }
        guards = tuple(
            EffectiveGuard(
                GuardedActionRule.model_validate({k: v for k, v in g.items() if k != "origin"}),
                Origin(**g["origin"]),
            )
            for g in doc["guarded_action_rules"]
        )
        return cls(
            version=doc["policy_version"],
            rules=rules,
            pins=pins,
            guards=guards,
            upgrade_windows=tuple(UpgradeWindow.model_validate(w) for w in doc["upgrade_windows"]),
            upgrade_windows_origin=origin(doc["upgrade_windows_origin"]),
            remediation_mode=doc["auto_remediation_mode"],
            remediation_origin=origin(doc["auto_remediation_origin"]),
            default_action=doc["default_package_action"],
            default_origin=origin(doc["default_package_action_origin"]),
            managed_managers=frozenset(doc["managed_managers"]),
            required=tuple(r for r in rules.values() if r.effect == "require"),
        )


def _origin(origin: Origin | None) -> dict[str, Any] | None:
    return None if origin is None else origin.as_dict()


@dataclass(frozen=True, slots=True)
class ScopeInfo:
    """What resolution needs to know of a scope."""

    id: str
    level: str
    path: str

    @property
    def rank(self) -> int:
        return LEVELS.index(self.level)


def resolve(bundles: Iterable[PolicyBundle], scopes: Iterable[ScopeInfo]) -> EffectivePolicy | None:
    """The effective policy of a set of scopes (a device's memberships and their ancestors).

    Args:
        bundles: the active, verified version of each policy of the tenant.
        scopes: every scope the target belongs to, ancestors included.

    Returns:
        The resolved policy, or None when no bundle is bound to any of the scopes (the target
        then has no valid policy).
    """
    scope_by_id = {s.id: s for s in scopes}
    bound: list[tuple[int, str, PolicyBundle, Origin]] = []
    for bundle in bundles:
        for scope_id in bundle.scope_bindings:
            scope = scope_by_id.get(scope_id)
            if scope is not None:
                origin = Origin(scope.id, scope.level, bundle.policy_id, bundle.policy_version)
                bound.append((scope.rank, f"{bundle.policy_id}:{scope.id}", bundle, origin))
    if not bound:
        return None
    # Least specific first, so a later (more specific) entry overrides an earlier one; the
    # id breaks ties between bundles on the same level deterministically.
    bound.sort(key=lambda item: (item[0], item[1]))

    rules: dict[PackageKey, tuple[int, EffectiveRule]] = {}
    pins: dict[PackageKey, tuple[int, EffectivePin]] = {}
    guards: list[EffectiveGuard] = []
    windows: tuple[tuple[UpgradeWindow, ...], Origin | None] = ((), None)
    remediation: tuple[str, Origin | None] = ("observe", None)
    default: tuple[str, Origin | None] = ("allow", None)
    managers: set[str] = set()

    for rank, _, bundle, origin in bound:
        for effect, items in (
            ("allow", bundle.allowed_packages),
            ("require", bundle.required_packages),
            ("deny", bundle.denied_packages),
        ):
            for item in items:
                key = (item.manager, item.name)
                current = rules.get(key)
                if (
                    current is None
                    or current[0] < rank
                    or _EFFECT_STRENGTH[effect] > _EFFECT_STRENGTH[current[1].effect]
                ):
                    rules[key] = (
                        rank,
                        EffectiveRule(item.manager, item.name, effect, item.versions, origin),  # type: ignore[arg-type]
                    )
        for pin in bundle.pin_rules:
            key = (pin.manager, pin.name)
            if key not in pins or pins[key][0] <= rank:
                pins[key] = (
                    rank,
                    EffectivePin(
                        pin.manager, pin.name, pin.version, pin.include_in_upgrade_all, origin
                    ),
                )
        guards.extend(EffectiveGuard(rule, origin) for rule in bundle.guarded_action_rules)
        if bundle.upgrade_windows:
            windows = (tuple(bundle.upgrade_windows), origin)
        if bundle.auto_remediation_mode is not None:
            remediation = (bundle.auto_remediation_mode, origin)
        if bundle.default_package_action is not None:
            default = (bundle.default_package_action, origin)
        managers.update(bundle.managed_managers)

    final_rules = {key: rule for key, (_, rule) in rules.items()}
    versions = sorted({f"{b.policy_id}@{b.policy_version}" for _, _, b, _ in bound})
    return EffectivePolicy(
        version=",".join(versions),
        rules=final_rules,
        pins={key: pin for key, (_, pin) in pins.items()},
        guards=tuple(guards),
        upgrade_windows=windows[0],
        upgrade_windows_origin=windows[1],
        remediation_mode=remediation[0],
        remediation_origin=remediation[1],
        default_action=default[0],
        default_origin=default[1],
        managed_managers=frozenset(managers),
        required=tuple(r for r in final_rules.values() if r.effect == "require"),
    )
