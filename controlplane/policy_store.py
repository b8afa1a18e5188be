"""Control plane policy store: the verified active bundles of a tenant and resolution caching.

A stored bundle is re-verified whenever a tenant's policy is loaded: a version whose signature
no longer verifies (tampered at rest, key withdrawn) is skipped and the previous verified
version of that policy stays active.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.effective import EffectivePolicy, ScopeInfo, resolve
from controlplane.models import DeviceScope, PolicyBundle, Scope, SigningKey, Tenant
from controlplane.policy_model import PolicyBundle as BundleDoc
from controlplane.signing import load_public_key, verify_signature
from controlplane.state import ServiceState

log = logging.getLogger(__name__)


@dataclass
class TenantPolicy:
    """Everything needed to resolve any target's policy in one tenant at one revision."""

    revision: int
    bundles: list[BundleDoc]
    scopes: dict[str, ScopeInfo]
    rejected: list[str]
    """``policy_id@version`` of stored versions that failed verification."""
    _resolved: dict[frozenset[str], EffectivePolicy | None] = field(default_factory=dict)

    def scope_set(self, scope_ids: list[str]) -> frozenset[str]:
        """The given scopes and all their ancestors."""
        out: set[str] = set()
        for scope_id in scope_ids:
            scope = self.scopes.get(scope_id)
            if scope is not None:
                out.update(part for part in scope.path.strip("/").split("/") if part)
        return frozenset(out)

    def effective(self, scope_ids: list[str]) -> EffectivePolicy | None:
        """Resolve (memoized per distinct scope set)."""
        key = self.scope_set(scope_ids)
        if key not in self._resolved:
            self._resolved[key] = resolve(self.bundles, [self.scopes[s] for s in key])
        return self._resolved[key]


async def trusted_keys(
    session: AsyncSession, state: ServiceState, tenant_id: str
) -> dict[str, str]:
    """Key id → public key of every key that may sign this tenant's bundles."""
    keys = {state.signer.key_id: state.signer.public_text}
    rows = await session.execute(
        select(SigningKey.key_id, SigningKey.public_key).where(SigningKey.tenant_id == tenant_id)
    )
    keys.update({key_id: public for key_id, public in rows})
    return keys


def bundle_verifies(row: PolicyBundle, keys: dict[str, str]) -> bool:
    """Whether a stored bundle row's signature verifies against the trusted keys."""
    public = keys.get(row.key_id)
    if public is None:
        return False
    try:
        return verify_signature(row.content, row.signature, load_public_key(public))
    except ValueError:
        return False


async def load_tenant_policy(
    session: AsyncSession, state: ServiceState, tenant_id: str
) -> TenantPolicy:
    """The tenant's current policy, cached until its policy revision changes."""
    revision = (
        await session.execute(select(Tenant.policy_revision).where(Tenant.id == tenant_id))
    ).scalar_one()
    cached = state.policy_cache.get((tenant_id, revision, frozenset()))
    if isinstance(cached, TenantPolicy):
        return cached
    keys = await trusted_keys(session, state, tenant_id)
    rows = (
        await session.execute(
            select(PolicyBundle)
            .where(PolicyBundle.tenant_id == tenant_id)
            .order_by(PolicyBundle.policy_id, PolicyBundle.policy_version.desc())
        )
    ).scalars()
    active: dict[str, BundleDoc] = {}
    rejected: list[str] = []
    for row in rows:
        if row.policy_id in active:
            continue
        try:
            doc = BundleDoc.model_validate(row.content)
        except ValidationError:
            doc = None
        if (
            doc is None
            or not bundle_verifies(row, keys)
            or doc.policy_version != row.policy_version
        ):
            rejected.append(f"{row.policy_id}@{row.policy_version}")
            log.warning(
                "stored policy bundle fails verification; previous version stays active",
                extra={"tenant_id": tenant_id, "bundle": f"{row.policy_id}@{row.policy_version}"},
            )
            continue
        active[row.policy_id] = doc
    scopes = {
        s.id: ScopeInfo(s.id, s.level, s.path)
        for s in (
            await session.execute(select(Scope).where(Scope.tenant_id == tenant_id))
        ).scalars()
    }
    policy = TenantPolicy(revision, list(active.values()), scopes, rejected)
    # Drop this tenant's older revisions before caching the new one.
    for key in [k for k in state.policy_cache if k[0] == tenant_id]:
        del state.policy_cache[key]
    state.policy_cache[(tenant_id, revision, frozenset())] = policy
    return policy


async def device_scope_ids(session: AsyncSession, device_id: str) -> list[str]:
    """The scopes a device is a direct member of."""
    rows = await session.execute(
        select(DeviceScope.scope_id).where(DeviceScope.device_id == device_id)
    )
    return sorted(rows.scalars())


async def bump_revision(session: AsyncSession, tenant_id: str) -> None:
    """Mark the tenant's policy as changed (scopes or bundles), invalidating every cache."""
    tenant = await session.get_one(Tenant, tenant_id)
    tenant.policy_revision += 1
