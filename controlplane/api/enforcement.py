"""Control plane API: the enforcement check an endpoint asks before acting, and its snapshot.

``POST /enforcement/check`` is on every endpoint's hot path. On SQLite each statement is a
thread hop (about half a millisecond here, far more when hops queue behind each other), so
after authentication the check reads the database at most once per ``FACTS_TTL`` per device:
the device's mode, memberships, inventory sequence and its tenant's policy revision come in
one query and are kept that long; the inventory is re-read only when its sequence moves; the
tenant policy comes from the shared revision-keyed cache; a presented snapshot is
signature-checked once per distinct document. Tenant and subtree confinement are checked
against the caller on every request, cached or not.

Only denials and confirmations append an ``enforcement_decided`` event, through the audit
group-commit writer: an allowed action is the endpoint's to log, and writing on every allow
would serialize all checks on the SQLite write lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, require, within
from controlplane.effective import EffectivePolicy
from controlplane.enforcement import (
    PACKAGE_ACTIONS,
    EnforcementDecision,
    EnforcementRequest,
    Installed,
    check,
)
from controlplane.errors import ConflictError, NotFoundError, UnprocessableError
from controlplane.events import NewEvent, append_events
from controlplane.http import Api, ApiRequest, Strict
from controlplane.models import Device, DeviceScope, Scope, Tenant, utcnow
from controlplane.policy_model import Action, Manager, PackageName
from controlplane.policy_store import TenantPolicy, load_tenant_policy
from controlplane.snapshot import SnapshotError, check_validity, issue_snapshot, verify_snapshot
from controlplane.state import ServiceState

api = Api()

SNAPSHOT_CACHE_SIZE: Final = 4096
"""Verified snapshot documents kept per service (one per device that enforces offline)."""
FACTS_TTL = 1.0
"""Seconds a device's mode, memberships, inventory sequence and policy revision are reused:
a policy publish, a mode change or a new inventory reaches checks at most this much later."""
FACTS_CACHE_SIZE: Final = 100_000
"""Devices whose facts are kept; the oldest entries go first."""
_clock = time.monotonic


class CheckBody(Strict):
    """An endpoint's question: may this device's manager run this action now?"""

    device_id: str = Field(min_length=1, max_length=40)
    """The device about to act."""
    manager: Manager
    """Package manager that would run the action."""
    action: Action
    """install, uninstall, upgrade, upgrade_all, pin, unpin (mutating); list, search, info."""
    package: PackageName | None = None
    """The package; required by install, uninstall, upgrade, pin, unpin and info."""
    version: str | None = Field(default=None, min_length=1, max_length=100)
    """Version to install, upgrade to or pin at; needed when a rule limits versions."""
    snapshot: dict[str, Any] | None = None
    """The device's signed snapshot: decide from it instead of the current server policy.
    An invalid, expired or foreign snapshot counts as no valid snapshot."""


class RuleOut(BaseModel):
    """The rule that decided, with its origin."""

    kind: str
    """deny, require, allow, pin, upgrade_window, default, unrestricted, read_only, mode,
    no_policy or guard."""
    origin: dict[str, Any] | None
    """scope_id, level, policy_id and policy_version of the bundle that set the rule."""
    detail: str | None
    """The rule's parameter (a version range, a pinned version, the windows)."""


class DecisionOut(BaseModel):
    """An enforcement decision (``controlplane.enforcement.EnforcementDecision``)."""

    device_id: str
    """The device asked about."""
    mode: str
    """The device's managed mode."""
    source: str
    """``server`` (current policy), ``snapshot`` (the presented one) or ``none``."""
    allowed: bool
    """Whether the endpoint may go ahead."""
    enforced: bool
    """Whether the decision is binding (managed-enforced)."""
    requires_confirmation: bool
    """A guard matched: a person must confirm, even when allowed."""
    reason: str
    """A sentence naming the deciding rule and its origin."""
    rule: RuleOut
    """The deciding rule."""
    would_deny: bool
    """What managed-enforced would answer (what managed-readonly reports)."""
    excluded_packages: list[str]
    """For upgrade_all: pinned packages to skip."""
    confirmation_rule: RuleOut | None
    """The guard that asks for confirmation, if any."""
    policy_version: str | None
    """Bundles of the policy decided from (``policy_id@version``), None without one."""
    snapshot_error: str | None
    """Why a presented snapshot was not used."""


class SnapshotOut(BaseModel):
    """A signed offline snapshot; check it with ``controlplane.snapshot.verify_snapshot``."""

    document: dict[str, Any]
    """device_id, tenant_id, issued_at, expires_at and the effective ``policy``."""
    signature: dict[str, str]
    """alg (Ed25519), key_id and base64url value over the RFC 8785 form of ``document``."""


@dataclass(frozen=True, slots=True)
class _DeviceFacts:
    id: str
    tenant_id: str
    mode: str
    inventory_seq: int
    policy_revision: int
    scopes: tuple[tuple[str, str], ...]
    """(scope id, materialized path) of each membership, by id."""
    read_at: float
    """``_clock()`` when read from the database."""

    @property
    def scope_ids(self) -> list[str]:
        return [scope_id for scope_id, _ in self.scopes]


@dataclass
class _Caches:
    """Per-application caches (several control planes may share a process in tests)."""

    facts: OrderedDict[str, _DeviceFacts] = field(default_factory=OrderedDict)
    """device id → its facts, oldest read first."""
    installed: dict[str, tuple[int, Installed]] = field(default_factory=dict)
    """device id → (inventory sequence, indexed inventory)."""
    snapshots: OrderedDict[bytes, tuple[dict[str, Any], EffectivePolicy]] = field(
        default_factory=OrderedDict
    )
    """digest of a verified envelope → (its document, its policy), least recent first."""


_CACHES: weakref.WeakKeyDictionary[web.Application, _Caches] = weakref.WeakKeyDictionary()


def _caches(req: ApiRequest) -> _Caches:
    found = _CACHES.get(req.request.app)
    if found is None:
        found = _CACHES[req.request.app] = _Caches()
    return found


async def _device(
    session: AsyncSession, caches: _Caches, caller: Caller, device_id: str, *, fresh: bool = False
) -> _DeviceFacts:
    """The device's facts (cached up to ``FACTS_TTL``), confined like ``devices.device_for``.

    Raises:
        NotFoundError: no such device in the caller's tenant.
        ForbiddenError: none of the device's scopes lies in the caller's subtree.
    """
    now = _clock()
    facts = None if fresh else caches.facts.get(device_id)
    if facts is None or now - facts.read_at >= FACTS_TTL:
        facts = await _read_device(session, device_id, now)
        if facts is not None:
            caches.facts[device_id] = facts
            caches.facts.move_to_end(device_id)
            if len(caches.facts) > FACTS_CACHE_SIZE:
                evicted, _ = caches.facts.popitem(last=False)
                caches.installed.pop(evicted, None)
    if facts is None or facts.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no device {device_id!r}", field="device_id")
    if not any(within(caller, path).allowed for _, path in facts.scopes):
        require(within(caller, facts.scopes[0][1] if facts.scopes else "/"))
    return facts


async def _read_device(session: AsyncSession, device_id: str, now: float) -> _DeviceFacts | None:
    rows = (
        await session.execute(
            select(
                Device.tenant_id,
                Device.managed_mode,
                Device.inventory_seq,
                Tenant.policy_revision,
                Scope.id,
                Scope.path,
            )
            .join(Tenant, Tenant.id == Device.tenant_id)
            .outerjoin(DeviceScope, DeviceScope.device_id == Device.id)
            .outerjoin(Scope, Scope.id == DeviceScope.scope_id)
            .where(Device.id == device_id)
        )
    ).all()
    if not rows:
        return None
    tenant_id, mode, seq, revision = rows[0][:4]
    scopes = tuple(sorted((row[4], row[5]) for row in rows if row[4] is not None))
    return _DeviceFacts(device_id, tenant_id, mode, seq, revision, scopes, now)


async def _installed(session: AsyncSession, caches: _Caches, device: _DeviceFacts) -> Installed:
    cached = caches.installed.get(device.id)
    if cached is not None and cached[0] == device.inventory_seq:
        return cached[1]
    rows = (
        await session.execute(select(Device.inventory).where(Device.id == device.id))
    ).scalar_one()
    installed = Installed.from_rows(rows or [])
    caches.installed[device.id] = (device.inventory_seq, installed)
    return installed


async def _tenant_policy(
    session: AsyncSession, state: ServiceState, device: _DeviceFacts
) -> TenantPolicy:
    # The revision came with the device row, so a cache hit costs no query of its own.
    cached = state.policy_cache.get((device.tenant_id, device.policy_revision, frozenset()))
    if isinstance(cached, TenantPolicy):
        return cached
    return await load_tenant_policy(session, state, device.tenant_id)


def _presented(
    req: ApiRequest, envelope: dict[str, Any], device: _DeviceFacts
) -> tuple[EffectivePolicy | None, str | None]:
    """The policy of a presented snapshot, or None and why it is not valid."""
    signer = req.state.signer
    now = utcnow()
    caches = _caches(req)
    # Keyed by a digest of the whole envelope, signature included, so a hit is a document
    # identical to one that verified before; anything else goes through verification.
    key = hashlib.sha256(orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS)).digest()
    hit = caches.snapshots.get(key)
    try:
        if hit is not None:
            caches.snapshots.move_to_end(key)
            check_validity(hit[0], now, device_id=device.id, tenant_id=device.tenant_id)
            return hit[1], None
        # Only the control plane's own key signs snapshots; authors' keys sign bundles.
        policy = verify_snapshot(
            envelope,
            {signer.key_id: signer.public_text},
            now,
            device_id=device.id,
            tenant_id=device.tenant_id,
        )
    except SnapshotError as exc:
        return None, str(exc)
    caches.snapshots[key] = (envelope["document"], policy)
    if len(caches.snapshots) > SNAPSHOT_CACHE_SIZE:
        caches.snapshots.popitem(last=False)
    return policy, None


@api.route(
    "POST",
    "/enforcement/check",
    summary="Decide whether a device may run a package action",
    permission="enforcement.check",
    tag="enforcement",
    body=CheckBody,
    response=DecisionOut,
)
async def enforcement_check(req: ApiRequest) -> dict[str, Any]:
    body = req.body
    assert isinstance(body, CheckBody)
    if body.action in PACKAGE_ACTIONS and body.package is None:
        raise UnprocessableError(f"{body.action} needs a package", field="package")
    me, state = req.me, req.state
    caches = _caches(req)
    async with state.sessions() as session:
        device = await _device(session, caches, me, body.device_id)
        installed = await _installed(session, caches, device)
        policy: EffectivePolicy | None = None
        source, problem = "none", None
        if device.mode != "unmanaged":
            if body.snapshot is not None:
                policy, problem = _presented(req, body.snapshot, device)
                source = "snapshot" if policy is not None else "none"
            else:
                policy = (await _tenant_policy(session, state, device)).effective(device.scope_ids)
                source = "server" if policy is not None else "none"
    request = EnforcementRequest(body.manager, body.action, body.package, body.version)
    decision = check(policy, device.mode, request, installed, utcnow())
    if problem is not None:
        decision = dataclasses.replace(
            decision, reason=f"{decision.reason} (presented snapshot refused: {problem})"
        )
    if decision.would_deny or decision.requires_confirmation:
        await _record(req, device, request, decision, source)
    return {
        "device_id": device.id,
        "mode": device.mode,
        "source": source,
        **decision.as_dict(),
        "snapshot_error": problem,
    }


async def _record(
    req: ApiRequest,
    device: _DeviceFacts,
    request: EnforcementRequest,
    decision: EnforcementDecision,
    source: str,
) -> None:
    if decision.would_deny:
        outcome = "denied" if decision.enforced else "would_deny"
    else:
        outcome = "confirmation_required"
    event = NewEvent(
        type="enforcement_decided",
        action=f"package.{request.action}",
        outcome=outcome,
        actor=req.me.actor,
        correlation_id=req.correlation_id,
        scope_id=device.scopes[0][0] if device.scopes else None,
        device_id=device.id,
        manager=request.manager,
        policy_version=decision.policy_version,
        data={
            "package": request.package,
            "version": request.version,
            "mode": device.mode,
            "source": source,
            "allowed": decision.allowed,
            "requires_confirmation": decision.requires_confirmation,
            "reason": decision.reason,
            "rule": decision.rule.as_dict(),
        },
    )
    state = req.state
    if state.audit is not None:
        # A decision has no transaction of its own to join: the group-commit writer batches
        # it with concurrent ones and returns once it is committed.
        await state.audit.append(device.tenant_id, event)
        return
    async with state.writing() as session:
        await append_events(session, device.tenant_id, [event])


@api.route(
    "GET",
    "/devices/{device_id}/policy-snapshot",
    summary="The device's effective policy as a signed offline snapshot",
    permission="policy.read",
    tag="enforcement",
    response=SnapshotOut,
)
async def policy_snapshot(req: ApiRequest) -> dict[str, Any]:
    me, state = req.me, req.state
    async with state.sessions() as session:
        # A snapshot lives for weeks: sign what is current, not what was cached.
        device = await _device(session, _caches(req), me, req.path("device_id"), fresh=True)
        policy = (await _tenant_policy(session, state, device)).effective(device.scope_ids)
    if policy is None:
        raise ConflictError(
            "the device has no valid policy: no verified bundle is bound to its scopes",
            field="device_id",
        )
    return issue_snapshot(
        state.signer,
        device_id=device.id,
        tenant_id=device.tenant_id,
        policy=policy,
        now=utcnow(),
        ttl=state.settings.snapshot_ttl,
    )
