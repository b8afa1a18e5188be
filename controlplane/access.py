"""Control plane access: who is calling (token, acting principal) and what their roles allow.

Every check returns a frozen ``Decision`` with a reason; only ``require`` raises.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.errors import ForbiddenError, UnauthorizedError
from controlplane.models import ApiToken, Principal, Scope, utcnow

LEVELS: Final = ("organization", "department", "team", "environment", "device_group")
"""Scope levels from least to most specific; the index is the precedence rank."""

READ: Final = frozenset(
    {
        "catalog.read",
        "risk.read",
        "evidence.read",
        "intent.read",
        "rollout.read",
        "approval.read",
        "incident.read",
        "tenant.read",
        "scope.read",
        "principal.read",
        "device.read",
        "policy.read",
        "compliance.read",
        "job.read",
    }
)
AUDIT: Final = frozenset({"event.read", "event.export", "event.verify"})
ALL: Final = (
    READ
    | AUDIT
    | frozenset(
        {
            "scope.write",
            "principal.write",
            "token.write",
            "device.write",
            "inventory.report",
            "policy.write",
            "signing_key.write",
            "enforcement.check",
            "webhook.read",
            "webhook.write",
            "compliance.recompute",
            "catalog.write",
            "artifact.write",
            "risk.assess",
            "exception.request",
            "exception.decide",
            "evidence.write",
            "intent.write",
            "rollout.operate",
            "approval.decide",
            "incident.write",
        }
    )
)
OPERATE: Final = frozenset({"device.write", "inventory.report", "enforcement.check"})

ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "owner": ALL,
    "admin": ALL,
    "platform_admin": READ
    | AUDIT
    | frozenset(
        {
            "catalog.write",
            "scope.write",
            "principal.write",
            "token.write",
            "policy.write",
            "signing_key.write",
            "webhook.read",
            "webhook.write",
            "compliance.recompute",
        }
    ),
    "auditor": READ | AUDIT,
    "operator": READ | OPERATE,
    "endpoint_ops": READ
    | OPERATE
    | frozenset({"event.read", "compliance.recompute", "rollout.operate", "incident.write"}),
    "viewer": READ,
    # seed 002 §5.5 and §14.1: packaging builds and stages but never publishes to production;
    # publishers publish approved artifacts; CAB approves; security owns exceptions.
    "packaging_engineer": READ
    | frozenset(
        {"catalog.write", "artifact.write", "evidence.write", "risk.assess", "exception.request"}
    ),
    "publisher": READ
    | frozenset(
        {"intent.write", "rollout.operate", "evidence.write", "risk.assess", "exception.request"}
    ),
    "cab_approver": READ | frozenset({"event.read", "approval.decide"}),
    "security_reviewer": READ | AUDIT | frozenset({"exception.decide", "incident.write"}),
}
"""Role → permissions (dotted lowercase actions). Seed 001 roles plus seed 002's EUCORA roles."""

ROLES: Final = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an access check, always with the reason and the rule that decided."""

    allowed: bool
    """Whether the action may proceed."""
    reason: str
    """A sentence a person can read."""
    rule: str
    """The deciding rule, such as ``role:auditor`` or ``default:deny``."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated principal a request acts as."""

    tenant_id: str
    """Tenant every query of this request is confined to."""
    principal_id: str
    """The acting principal (the named one when a gateway acts on someone's behalf)."""
    name: str
    """The acting principal's unique name in its tenant."""
    roles: tuple[str, ...]
    """Roles granted to the acting principal."""
    scope_id: str
    """Root of the scope subtree the principal may see and change."""
    scope_path: str
    """Materialized path of ``scope_id``."""
    via: str | None = None
    """Name of the trusted gateway principal that asserted this identity, if any."""

    @property
    def actor(self) -> str:
        """How events record this caller."""
        return self.name if self.via is None else f"{self.name} (via {self.via})"


def hash_token(secret: str) -> str:
    """The stored form of an API token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def permits(caller: Caller, action: str) -> Decision:
    """Whether any of the caller's roles grants ``action``; deny when none does."""
    for role in caller.roles:
        if action in ROLE_PERMISSIONS.get(role, frozenset()):
            return Decision(True, f"role {role} grants {action}", f"role:{role}")
    return Decision(
        False, f"none of the roles {list(caller.roles)} grants {action}", "default:deny"
    )


def within(caller: Caller, scope_path: str) -> Decision:
    """Whether a scope (by materialized path) lies in the caller's scope subtree."""
    if scope_path.startswith(caller.scope_path):
        return Decision(True, "scope is inside the caller's subtree", "scope:subtree")
    return Decision(False, "scope is outside the caller's subtree", "default:deny")


def tenant_wide(caller: Caller) -> Decision:
    """Whether the caller's subtree is the whole tenant (needed for the tenant's audit chain,
    which cannot be verified in part, and for webhooks, which see every event)."""
    if caller.scope_path.count("/") == 2:
        return Decision(True, "the caller's scope is the organization", "scope:tenant")
    return Decision(
        False,
        "the audit trail and webhooks need a principal scoped to the whole organization",
        "default:deny",
    )


def require(decision: Decision) -> None:
    """The enforcement point: raise 403 with the reason when a decision denies."""
    if not decision.allowed:
        raise ForbiddenError(decision.reason, details={"rule": decision.rule})


def bootstrap_ok(presented: str, configured: str | None) -> bool:
    """Constant-time comparison of the platform bootstrap token."""
    return configured is not None and hmac.compare_digest(presented.encode(), configured.encode())


async def authenticate(
    session: AsyncSession, secret: str, act_as: str | None
) -> tuple[Caller, datetime | None]:
    """Resolve a bearer secret (and an optional acting principal) to a caller, or raise 401/403.

    Returns:
        The caller and the token's expiry (None when it does not expire).
    """
    row = (
        await session.execute(
            select(ApiToken, Principal, Scope)
            .join(Principal, Principal.id == ApiToken.principal_id)
            .join(Scope, Scope.id == Principal.scope_id)
            .where(ApiToken.token_hash == hash_token(secret))
        )
    ).first()
    if row is None:
        raise UnauthorizedError("unknown API token")
    token, principal, scope = row
    now = utcnow()
    if token.revoked_at is not None:
        raise UnauthorizedError("API token revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise UnauthorizedError("API token expired")
    caller = Caller(
        tenant_id=principal.tenant_id,
        principal_id=principal.id,
        name=principal.name,
        roles=tuple(principal.roles),
        scope_id=principal.scope_id,
        scope_path=scope.path,
    )
    if act_as is None:
        return caller, token.expires_at
    if not principal.may_act_for_others:
        raise ForbiddenError(
            "this credential may not act on behalf of another principal", field="X-Act-As"
        )
    acted = (
        await session.execute(
            select(Principal, Scope)
            .join(Scope, Scope.id == Principal.scope_id)
            .where(Principal.tenant_id == principal.tenant_id, Principal.name == act_as)
        )
    ).first()
    if acted is None:
        raise ForbiddenError(f"no principal named {act_as!r} in this tenant", field="X-Act-As")
    other, other_scope = acted
    return Caller(
        tenant_id=other.tenant_id,
        principal_id=other.id,
        name=other.name,
        roles=tuple(other.roles),
        scope_id=other.scope_id,
        scope_path=other_scope.path,
        via=principal.name,
    ), token.expires_at
