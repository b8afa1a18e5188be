"""Control plane enforcement: the pure decision an endpoint asks for before a package action.

Seed 000 §6-§9 and seed 001 §3-§4, §11. ``check`` answers one question — may this device's
manager run this action on this package now? — from an effective policy, the device's mode and
its installed packages. It does no I/O and no validation: the API layer validates requests and
``EffectivePolicy`` is already resolved, so one call stays in the tens of microseconds.

Order of evaluation:

1. ``unmanaged``: allowed; the policy is not evaluated (local pins still leave ``upgrade_all``).
2. No valid policy: read-only actions allowed; mutating ones blocked in ``managed-enforced``.
3. Read-only actions (list, search, info): allowed.
4. The package's effective rule (deny, then version range of allow/require), then its
   effective pin, then ``default_package_action``; ``upgrade``/``upgrade_all`` then need an
   open upgrade window.
5. Guards add ``requires_confirmation`` in every managed mode, whatever the outcome;
   a confirmation never turns a denial into an allow.

``managed-readonly`` runs the same evaluation but never blocks: ``allowed`` stays True and
``would_deny`` tells what ``managed-enforced`` would have answered.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from controlplane.effective import EffectivePin, EffectivePolicy, EffectiveRule, Origin, PackageKey
from controlplane.policy_model import MUTATING
from controlplane.versions import parse_range, version_key

Mode = Literal["unmanaged", "managed-readonly", "managed-enforced"]
MODES: Final = ("unmanaged", "managed-readonly", "managed-enforced")
READ_ONLY: Final = frozenset({"list", "search", "info"})
PACKAGE_ACTIONS: Final = frozenset({"install", "uninstall", "upgrade", "pin", "unpin", "info"})
"""Actions that name one package; the others act on a manager (list, search, upgrade_all)."""

RuleKind = Literal[
    "mode",
    "no_policy",
    "request",
    "read_only",
    "deny",
    "require",
    "allow",
    "pin",
    "upgrade_window",
    "default",
    "unrestricted",
    "guard",
]
_WEEKDAYS: Final = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@dataclass(frozen=True, slots=True)
class EnforcementRequest:
    """What an endpoint is about to do."""

    manager: str
    """Package manager that would run the action (brew, pip, winget, …)."""
    action: str
    """One of ``policy_model.Action``."""
    package: str | None = None
    """Package the action names; None for list and upgrade_all (search puts its query here)."""
    version: str | None = None
    """Version to install, upgrade to or pin at, when the endpoint knows it."""


@dataclass(frozen=True, slots=True)
class RuleRef:
    """The rule that decided, with where it came from."""

    kind: RuleKind
    """What kind of rule decided (``deny``, ``allow``, ``pin``, ``default``, ``mode``, …)."""
    origin: Origin | None = None
    """Scope, bundle and version that set it; None for built-in behaviour."""
    detail: str | None = None
    """The rule's parameter: a version range, a pinned version, a guarded action."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "origin": None if self.origin is None else self.origin.as_dict(),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class EnforcementDecision:
    """The answer to one enforcement check."""

    allowed: bool
    """Whether the endpoint may go ahead (always True unless the mode enforces)."""
    enforced: bool
    """Whether this decision is binding (``managed-enforced``)."""
    requires_confirmation: bool
    """A guard matched: a person must confirm explicitly, even though the action is allowed."""
    reason: str
    """A sentence a person can read, naming the rule and its origin."""
    rule: RuleRef
    """The deciding rule."""
    would_deny: bool
    """Whether ``managed-enforced`` would deny this (what ``managed-readonly`` reports)."""
    excluded_packages: tuple[str, ...] = ()
    """For ``upgrade_all``: pinned packages of the manager that the bulk upgrade must skip."""
    confirmation_rule: RuleRef | None = None
    """The guard that asks for confirmation, when one matched."""
    policy_version: str | None = None
    """The effective policy's bundles (``policy_id@version``), None without a policy."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form, as the API returns it."""
        return {
            "allowed": self.allowed,
            "enforced": self.enforced,
            "requires_confirmation": self.requires_confirmation,
            "reason": self.reason,
            "rule": self.rule.as_dict(),
            "would_deny": self.would_deny,
            "excluded_packages": list(self.excluded_packages),
            "confirmation_rule": (
                None if self.confirmation_rule is None else self.confirmation_rule.as_dict()
            ),
            "policy_version": self.policy_version,
        }


@dataclass(frozen=True, slots=True)
class Installed:
    """A device's installed packages, indexed for ``check``."""

    versions: dict[PackageKey, str] = field(default_factory=dict)
    """(manager, name) → installed version."""
    pinned: dict[str, frozenset[str]] = field(default_factory=dict)
    """manager → names the device has pinned locally."""
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    """manager → names installed."""

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Installed:
        """Index inventory rows ``[manager, name, version, pinned]`` (``Device.inventory``)."""
        versions: dict[PackageKey, str] = {}
        pinned: dict[str, set[str]] = {}
        names: dict[str, set[str]] = {}
        for manager, name, version, is_pinned in rows:
            versions[(manager, name)] = version
            names.setdefault(manager, set()).add(name)
            if is_pinned:
                pinned.setdefault(manager, set()).add(name)
        return cls(
            versions,
            {m: frozenset(n) for m, n in pinned.items()},
            {m: frozenset(n) for m, n in names.items()},
        )


NOTHING_INSTALLED: Final = Installed()


@dataclass(frozen=True, slots=True)
class _Window:
    zone: ZoneInfo
    days: frozenset[int]
    start: int
    """Seconds after local midnight."""
    end: int

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        weekday = local.weekday()
        moment = local.hour * 3600 + local.minute * 60 + local.second
        if self.start < self.end:
            return weekday in self.days and self.start <= moment < self.end
        if self.start > self.end:
            # Spans midnight: the evening part opens on a listed day, the morning part belongs
            # to the window that opened the day before.
            return (weekday in self.days and moment >= self.start) or (
                (weekday - 1) % 7 in self.days and moment < self.end
            )
        return weekday in self.days


@dataclass(frozen=True, slots=True)
class _Index:
    """What ``check`` precomputes once per effective policy."""

    guards: dict[str, tuple[tuple[str | None, str | None, RuleRef], ...]]
    """action → (manager or None, name or None, rule) of every guard on it."""
    pins: dict[str, dict[str, EffectivePin]]
    """manager → name → effective pin."""
    pin_excluded: dict[str, frozenset[str]]
    """manager → names whose effective pin keeps them out of ``upgrade_all``."""
    pin_override: dict[str, frozenset[str]]
    """manager → names whose effective pin lets ``upgrade_all`` touch them."""
    windows: tuple[_Window, ...]
    windows_text: str


_INDEXES: dict[int, _Index] = {}


def _index(policy: EffectivePolicy) -> _Index:
    found = _INDEXES.get(id(policy))
    if found is not None:
        return found
    built = _build_index(policy)
    _INDEXES[id(policy)] = built
    # Keyed by id because EffectivePolicy holds dicts and is unhashable; the entry leaves with
    # the policy, before its id can be reused.
    weakref.finalize(policy, _INDEXES.pop, id(policy), None)
    return built


def _build_index(policy: EffectivePolicy) -> _Index:
    guards: dict[str, list[tuple[str | None, str | None, RuleRef]]] = {}
    for guard in policy.guards:
        rule = guard.rule
        detail = " ".join(x for x in (rule.action, rule.manager, rule.name) if x is not None)
        guards.setdefault(rule.action, []).append(
            (rule.manager, rule.name, RuleRef("guard", guard.origin, detail))
        )
    pins: dict[str, dict[str, EffectivePin]] = {}
    for (manager, name), pin in policy.pins.items():
        pins.setdefault(manager, {})[name] = pin
    windows = tuple(
        _Window(
            ZoneInfo(w.timezone),
            frozenset(_WEEKDAYS[d] for d in w.days),
            _seconds(w.start),
            _seconds(w.end),
        )
        for w in policy.upgrade_windows
    )
    windows_text = "; ".join(
        f"{','.join(w.days)} {w.start:%H:%M}-{w.end:%H:%M} {w.timezone}"
        for w in policy.upgrade_windows
    )
    return _Index(
        guards={action: tuple(items) for action, items in guards.items()},
        pins=pins,
        pin_excluded={
            m: frozenset(n for n, p in by_name.items() if not p.include_in_upgrade_all)
            for m, by_name in pins.items()
        },
        pin_override={
            m: frozenset(n for n, p in by_name.items() if p.include_in_upgrade_all)
            for m, by_name in pins.items()
        },
        windows=windows,
        windows_text=windows_text,
    )


def _seconds(moment: time) -> int:
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def _describe(origin: Origin | None) -> str:
    """``policy baseline v3 at team scp_…``, or the built-in default."""
    if origin is None:
        return "the built-in default"
    return f"policy {origin.policy_id} v{origin.policy_version} at {origin.level} {origin.scope_id}"


type _Verdict = tuple[bool, str, RuleRef]
"""(denied, reason, rule) of the policy evaluation."""


def check(
    policy: EffectivePolicy | None,
    mode: str,
    request: EnforcementRequest,
    installed: Installed,
    now: datetime,
) -> EnforcementDecision:
    """Decide whether an endpoint may run a package action.

    Args:
        policy: the device's effective policy (or its verified snapshot); None when the device
            has no valid policy.
        mode: ``unmanaged``, ``managed-readonly`` or ``managed-enforced``; an unknown mode is
            treated as ``managed-enforced`` so a typo never loosens enforcement.
        request: manager, action, package and version.
        installed: the device's installed packages (``Installed.from_rows``).
        now: the current time, timezone-aware (upgrade windows are evaluated in their zone).

    Returns:
        The decision, with the reason and the rule (and its origin) that decided.
    """
    action = request.action
    manager = request.manager
    excluded: tuple[str, ...] = ()
    if mode == "unmanaged":
        if action == "upgrade_all":
            # Local pins are a safety rule of the endpoint itself, not policy: they hold even
            # when no policy is evaluated.
            excluded = tuple(sorted(installed.pinned.get(manager, ())))
        return EnforcementDecision(
            allowed=True,
            enforced=False,
            requires_confirmation=False,
            reason="the device is unmanaged: policy is not evaluated",
            rule=RuleRef("mode", detail="unmanaged"),
            would_deny=False,
            excluded_packages=excluded,
        )
    enforced = mode != "managed-readonly"
    if policy is None:
        return _without_policy(action, manager, installed, enforced=enforced)

    ix = _index(policy)
    if action == "upgrade_all":
        excluded = _excluded(ix, manager, installed)
    if action in READ_ONLY:
        denied, reason, rule = (
            False,
            f"{action} is read-only; policy does not restrict it",
            RuleRef("read_only"),
        )
    else:
        denied, reason, rule = _evaluate(policy, ix, request, installed, now)
    guard = _guard(ix, request, installed, excluded) if ix.guards else None
    if guard is not None:
        reason += f"; {guard.detail} needs explicit confirmation ({_describe(guard.origin)})"
    if denied and not enforced:
        reason = f"managed-readonly reports but does not block: {reason}"
    return EnforcementDecision(
        allowed=not (denied and enforced),
        enforced=enforced,
        requires_confirmation=guard is not None,
        reason=reason,
        rule=rule,
        would_deny=denied,
        excluded_packages=excluded,
        confirmation_rule=guard,
        policy_version=policy.version,
    )


def _without_policy(
    action: str, manager: str, installed: Installed, *, enforced: bool
) -> EnforcementDecision:
    mutating = action in MUTATING
    if not mutating:
        reason = f"no valid policy snapshot; {action} is read-only and stays available"
    elif enforced:
        reason = f"no valid policy snapshot: {action} is blocked in managed-enforced mode"
    else:
        reason = (
            "managed-readonly reports but does not block: no valid policy snapshot, "
            f"so managed-enforced would block {action}"
        )
    excluded = tuple(sorted(installed.pinned.get(manager, ()))) if action == "upgrade_all" else ()
    return EnforcementDecision(
        allowed=not (mutating and enforced),
        enforced=enforced,
        requires_confirmation=False,
        reason=reason,
        rule=RuleRef("no_policy"),
        would_deny=mutating,
        excluded_packages=excluded,
    )


def _evaluate(
    policy: EffectivePolicy,
    ix: _Index,
    request: EnforcementRequest,
    installed: Installed,
    now: datetime,
) -> _Verdict:
    action, manager, package = request.action, request.manager, request.package
    if action == "upgrade_all":
        return _window(ix, policy, now, f"upgrade_all for {manager}")
    if package is None:
        return True, f"{action} must name a package", RuleRef("request")
    key = (manager, package)
    label = f"{manager}/{package}"
    rule = policy.rules.get(key)
    pin = ix.pins.get(manager, {}).get(package)
    if action == "uninstall":
        if rule is not None and rule.effect == "require":
            return (
                True,
                f"{label} is required by {_describe(rule.origin)} and cannot be uninstalled",
                _ref(rule),
            )
        if rule is not None and rule.effect == "deny":
            return False, f"removing {label}, which {_describe(rule.origin)} denies", _ref(rule)
        return (
            False,
            f"no rule requires {label}; uninstalling it is allowed",
            RuleRef("unrestricted"),
        )
    if action in ("pin", "unpin"):
        return _pin_action(action, label, pin, request.version or installed.versions.get(key))
    # install and upgrade
    verdict = _package_rule(policy, rule, label, request.version, action)
    if verdict[0]:
        return verdict
    if pin is not None and (
        request.version is None or version_key(request.version) != version_key(pin.version)
    ):
        target = "an unnamed version" if request.version is None else request.version
        return (
            True,
            f"{label} is pinned at {pin.version} by {_describe(pin.origin)}; "
            f"{action} to {target} would move it off the pin",
            RuleRef("pin", pin.origin, pin.version),
        )
    if action == "upgrade":
        window = _window(ix, policy, now, f"upgrading {label}")
        if window[0]:
            return window
    return verdict


def _package_rule(
    policy: EffectivePolicy,
    rule: EffectiveRule | None,
    label: str,
    version: str | None,
    action: str,
) -> _Verdict:
    if rule is not None:
        if rule.effect == "deny":
            if rule.versions is None:
                return True, f"{label} is denied by {_describe(rule.origin)}", _ref(rule)
            if version is None:
                return (
                    True,
                    f"{_describe(rule.origin)} denies {label} {rule.versions}; "
                    f"name the version to {action} so it can be checked",
                    _ref(rule),
                )
            if parse_range(rule.versions).contains(version):
                return (
                    True,
                    f"{label} {version} is in the range {rule.versions} denied by "
                    f"{_describe(rule.origin)}",
                    _ref(rule),
                )
            # Outside the denied range no rule names this version: the default decides.
        else:
            verb = "requires" if rule.effect == "require" else "allows"
            if rule.versions is None:
                return False, f"{_describe(rule.origin)} {verb} {label}", _ref(rule)
            if version is None:
                return (
                    True,
                    f"{_describe(rule.origin)} {verb} {label} only at {rule.versions}; "
                    f"name the version to {action} so it can be checked",
                    _ref(rule),
                )
            if parse_range(rule.versions).contains(version):
                return (
                    False,
                    f"{label} {version} is within {rule.versions}, which {_describe(rule.origin)} "
                    f"{verb}",
                    _ref(rule),
                )
            return (
                True,
                f"{label} {version} is outside the range {rule.versions} that "
                f"{_describe(rule.origin)} {verb}",
                _ref(rule),
            )
    default = RuleRef("default", policy.default_origin, policy.default_action)
    if policy.default_action == "deny":
        return (
            True,
            f"no rule allows {label} and the default package action is deny "
            f"({_describe(policy.default_origin)})",
            default,
        )
    return (
        False,
        f"no rule names {label}; the default package action is allow "
        f"({_describe(policy.default_origin)})",
        default,
    )


def _pin_action(action: str, label: str, pin: EffectivePin | None, version: str | None) -> _Verdict:
    if pin is None:
        return (
            False,
            f"no effective pin governs {label}; {action} is allowed",
            RuleRef("unrestricted"),
        )
    ref = RuleRef("pin", pin.origin, pin.version)
    if action == "unpin":
        return True, f"{label} must stay pinned at {pin.version} ({_describe(pin.origin)})", ref
    if version is not None and version_key(version) == version_key(pin.version):
        return False, f"{label} is to be pinned at {pin.version} ({_describe(pin.origin)})", ref
    return (
        True,
        f"{label} must be pinned at {pin.version} ({_describe(pin.origin)}), "
        f"not at {version or 'an unnamed version'}",
        ref,
    )


def _window(ix: _Index, policy: EffectivePolicy, now: datetime, what: str) -> _Verdict:
    if not ix.windows:
        return False, f"no upgrade window restricts {what}", RuleRef("unrestricted")
    origin = policy.upgrade_windows_origin
    ref = RuleRef("upgrade_window", origin, ix.windows_text)
    for window in ix.windows:
        if window.contains(now):
            return False, f"{what} is inside an upgrade window ({_describe(origin)})", ref
    return (
        True,
        f"{what} is outside the upgrade windows {ix.windows_text} set by {_describe(origin)}",
        ref,
    )


def _excluded(ix: _Index, manager: str, installed: Installed) -> tuple[str, ...]:
    """Pinned packages ``upgrade_all`` must skip.

    Effective pins are listed whether or not the inventory shows the package, so a stale
    inventory never lets a bulk upgrade touch a pinned package; ``include_in_upgrade_all`` is
    the explicit override, and it also releases a package the device pinned locally.
    """
    local = installed.pinned.get(manager)
    by_policy = ix.pin_excluded.get(manager)
    if not local and not by_policy:
        return ()
    names = set(by_policy or ())
    if local:
        names.update(local - ix.pin_override.get(manager, frozenset()))
    return tuple(sorted(names))


def _guard(
    ix: _Index, request: EnforcementRequest, installed: Installed, excluded: tuple[str, ...]
) -> RuleRef | None:
    manager, package = request.manager, request.package
    for g_manager, g_name, ref in ix.guards.get(request.action, ()):
        if (g_manager is None or g_manager == manager) and (g_name is None or g_name == package):
            return ref
    if request.action == "upgrade_all":
        # A bulk upgrade runs every package's upgrade: a guarded upgrade among them (or a
        # bulk-upgrade guard naming one of them) needs the same confirmation as alone.
        touched = installed.names.get(manager, frozenset()).difference(excluded)
        for action in ("upgrade_all", "upgrade"):
            for g_manager, g_name, ref in ix.guards.get(action, ()):
                if g_manager is not None and g_manager != manager:
                    continue
                if g_name is None or g_name in touched:
                    return ref
    return None


def _ref(rule: EffectiveRule) -> RuleRef:
    return RuleRef(rule.effect, rule.origin, rule.versions)
