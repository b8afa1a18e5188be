"""Control plane execution planes: which intent a connector gets and which devices it reaches.

Plane-agnostic, so every connector targets alike: an intent reaches the tenant's devices that
are in the rollout's current ring and inside the intent's target scope subtree, minus the
subtrees of ``constraints.exclude_scope_ids``, at most ``constraints.max_devices`` of them
per ring (the lowest device ids, so a repeated selection names the same devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.connectors import DeviceRef, Intent
from controlplane.models import Device, DeviceScope, Scope
from controlplane.models_release import Application, AppVersion, DeploymentIntent, Rollout

MAX_EXCLUDED_SCOPES: Final = 100
"""More excluded scopes than this are ignored beyond the first ones (a runaway constraint)."""


async def load_intent(session: AsyncSession, intent_id: str) -> Intent | None:
    """The connector's view of a deployment intent, at its rollout's current ring.

    Returns:
        None when there is no such intent.
    """
    row = (
        await session.execute(
            select(DeploymentIntent, Application.name, AppVersion.version, Rollout.ring)
            .join(Application, Application.id == DeploymentIntent.application_id)
            .join(AppVersion, AppVersion.id == DeploymentIntent.version_id)
            .outerjoin(Rollout, Rollout.intent_id == DeploymentIntent.id)
            .where(DeploymentIntent.id == intent_id)
        )
    ).first()
    if row is None:
        return None
    intent, application, version, ring = row
    return Intent(
        id=intent.id,
        tenant_id=intent.tenant_id,
        application_id=intent.application_id,
        application=application,
        version_id=intent.version_id,
        version=version,
        target_scope_id=intent.target_scope_id,
        ring=intent.ring if ring is None else ring,
        constraints=dict(intent.constraints or {}),
    )


def max_devices(constraints: dict[str, Any]) -> int | None:
    """``constraints.max_devices`` when it is a non-negative integer, else None (no cap)."""
    value = constraints.get("max_devices")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def excluded_scope_ids(constraints: dict[str, Any]) -> list[str]:
    """``constraints.exclude_scope_ids`` as a list of strings (anything else is ignored)."""
    value = constraints.get("exclude_scope_ids")
    if not isinstance(value, list):
        return []
    return [s for s in value if isinstance(s, str)][:MAX_EXCLUDED_SCOPES]


async def target_devices(session: AsyncSession, intent: Intent) -> list[DeviceRef]:
    """The devices ``intent`` reaches in its current ring, ordered by id.

    Returns:
        An empty list when the target scope is not the tenant's.
    """
    paths = await _paths(session, intent.tenant_id, [intent.target_scope_id])
    if not paths:
        return []
    excluded = await _paths(session, intent.tenant_id, excluded_scope_ids(intent.constraints))
    stmt = (
        select(Device.id, Device.name, Device.platform, Device.site_class, Device.ring)
        .where(
            Device.tenant_id == intent.tenant_id,
            Device.ring == intent.ring,
            Device.id.in_(_members(intent.tenant_id, paths)),
        )
        .order_by(Device.id)
    )
    if excluded:
        stmt = stmt.where(Device.id.not_in(_members(intent.tenant_id, excluded)))
    cap = max_devices(intent.constraints)
    if cap is not None:
        stmt = stmt.limit(cap)
    return [DeviceRef(*row) for row in await session.execute(stmt)]


async def _paths(session: AsyncSession, tenant_id: str, scope_ids: Sequence[str]) -> list[str]:
    if not scope_ids:
        return []
    rows = await session.execute(
        select(Scope.path).where(Scope.tenant_id == tenant_id, Scope.id.in_(list(scope_ids)))
    )
    return list(rows.scalars())


def _members(tenant_id: str, paths: Sequence[str]) -> Any:
    """Device ids with a membership anywhere in the subtrees at ``paths``."""
    inside: list[ColumnElement[bool]] = [Scope.path.startswith(p, autoescape=True) for p in paths]
    return (
        select(DeviceScope.device_id)
        .join(Scope, Scope.id == DeviceScope.scope_id)
        .where(DeviceScope.tenant_id == tenant_id, or_(*inside))
    )
