"""Control plane policy bundles: the declarative document an author publishes (seed 001 §3)."""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from controlplane.http import Strict
from controlplane.versions import parse_range

Manager = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,39}$")]
"""A package manager: brew, pip, npm, winget, apt, msi, …"""
PackageName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s\x00-\x1f]+$")]
Action = Literal[
    "install", "uninstall", "upgrade", "upgrade_all", "pin", "unpin", "list", "search", "info"
]
MUTATING: frozenset[str] = frozenset(
    {"install", "uninstall", "upgrade", "upgrade_all", "pin", "unpin"}
)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class PackageRule(Strict):
    """A package named by manager and name, optionally limited to a version range."""

    manager: Manager
    """Package manager the rule governs."""
    name: PackageName
    """Package name as the manager spells it."""
    versions: str | None = Field(default=None, max_length=200)
    """Allowed version range such as ``>=1.2,<2``; None means any version."""

    @field_validator("versions")
    @classmethod
    def _range(cls, value: str | None) -> str | None:
        if value is not None:
            parse_range(value)
        return value


class PinRule(Strict):
    """A package that must be pinned at a version."""

    manager: Manager
    """Package manager."""
    name: PackageName
    """Package name."""
    version: str = Field(min_length=1, max_length=100)
    """The pinned version."""
    include_in_upgrade_all: bool = False
    """Explicit override: let ``upgrade_all`` touch this pinned package."""


class UpgradeWindow(Strict):
    """A recurring window in which upgrades may run."""

    days: list[Weekday] = Field(min_length=1)
    """Weekdays the window opens on."""
    start: time
    """Local start time."""
    end: time
    """Local end time (exclusive); earlier than start means the window spans midnight."""
    timezone: str = "UTC"
    """IANA time zone of start and end."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class GuardedActionRule(Strict):
    """An action that always needs an explicit confirmation, even when allowed."""

    action: Action
    """The guarded action."""
    manager: Manager | None = None
    """Limit to one manager; None guards it for every manager."""
    name: PackageName | None = None
    """Limit to one package; None guards it for every package."""


class PolicyBundle(Strict):
    """A policy bundle version, with at least the seed's fields."""

    policy_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    """Stable identifier of the policy across versions."""
    policy_version: int = Field(ge=1, le=2_000_000_000)
    """Version number; each version is immutable and must exceed the previous one."""
    scope_bindings: list[str] = Field(min_length=1, max_length=100)
    """Scope ids the bundle applies to (and, through them, their subtrees)."""
    description: str = Field(default="", max_length=2000)
    """Free text for people."""
    required_packages: list[PackageRule] = Field(default_factory=list, max_length=5000)
    """Packages that must be installed (within their range)."""
    allowed_packages: list[PackageRule] = Field(default_factory=list, max_length=5000)
    """Packages that may be installed (within their range)."""
    denied_packages: list[PackageRule] = Field(default_factory=list, max_length=5000)
    """Packages that must not be installed (in their range, or at all)."""
    pin_rules: list[PinRule] = Field(default_factory=list, max_length=5000)
    """Packages that must be pinned at a version."""
    upgrade_windows: list[UpgradeWindow] = Field(default_factory=list, max_length=50)
    """When upgrades may run; empty means any time."""
    guarded_action_rules: list[GuardedActionRule] = Field(default_factory=list, max_length=200)
    """Actions that always require confirmation."""
    auto_remediation_mode: Literal["observe", "assist", "enforce"] | None = None
    """Remediation mode (seed 001 §6); None inherits from a less specific scope."""
    managed_managers: list[Manager] = Field(default_factory=list, max_length=50)
    """Managers governed here; packages of other managers are ``unmanaged_toolchain`` drift."""
    default_package_action: Literal["allow", "deny"] | None = None
    """Answer for a package no rule names; None inherits (the overall default is allow)."""
