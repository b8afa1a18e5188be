"""Control plane compliance: evaluate devices, store their records and keep scope counts current.

Two paths write compliance state:

- ``evaluate_device`` runs inside the caller's write transaction (an inventory report, a device
  update) and moves the scope pre-aggregates by the device's change alone, so a summary read
  never counts anything.
- ``recompute_tenant`` re-evaluates a whole tenant after a policy change, in chunks of devices
  read with Core selects and written with bulk statements, then rebuilds the tenant's scope
  counts in one pass. ``recompute_worker`` runs it for queued ``compliance_recompute`` jobs.

Scope counts (``ScopeCount``) hold, per scope, the number of devices of its subtree in each
state (``kind="state"``) and with at least one finding of each category (``kind="category"``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import drift
from controlplane.effective import Origin
from controlplane.events import NewEvent, append_events
from controlplane.models import (
    ComplianceRecord,
    Device,
    DeviceScope,
    ScopeCount,
    Violation,
    utcnow,
)
from controlplane.policy_store import TenantPolicy, device_scope_ids, load_tenant_policy
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

SYSTEM_ACTOR: Final = "controlplane"
"""Actor recorded for evaluations the service starts by itself."""

_RECORDS = cast(Table, ComplianceRecord.__table__)
_VIOLATIONS = cast(Table, Violation.__table__)
_COUNTS = cast(Table, ScopeCount.__table__)


def record_json(record: ComplianceRecord) -> dict[str, Any]:
    """The JSON form of a stored compliance record (what ``evaluate_device`` returns)."""
    return {
        "device_id": record.device_id,
        "state": record.state,
        "policy_version": record.policy_version or None,
        "evaluated_at": record.evaluated_at.isoformat(),
        "reason": record.reason,
        "violations": record.violations,
    }


def managers_origin(policy: TenantPolicy, scope_set: frozenset[str]) -> Origin | None:
    """The most specific bundle that names managed managers for a scope set.

    ``EffectivePolicy`` unions ``managed_managers`` without recording where they came from;
    ``unmanaged_toolchain`` findings are attributed to this bundle instead.
    """
    best: tuple[int, str, Origin] | None = None
    for bundle in policy.bundles:
        if not bundle.managed_managers:
            continue
        for scope_id in bundle.scope_bindings:
            scope = policy.scopes.get(scope_id)
            if scope is None or scope_id not in scope_set:
                continue
            candidate = (scope.rank, f"{bundle.policy_id}:{scope_id}")
            if best is None or candidate > best[:2]:
                origin = Origin(scope_id, scope.level, bundle.policy_id, bundle.policy_version)
                best = (*candidate, origin)
    return None if best is None else best[2]


_DEVICE_COLUMNS: Final = (
    Device.id,
    Device.managed_mode,
    Device.last_checkin_at,
    Device.inventory_seq,
    Device.inventory,
)
"""What evaluation reads of a device, as a Core select (ORM objects cost too much per row)."""


@dataclass
class _Evaluator:
    """Evaluates devices of one tenant at one policy revision, resolving each distinct
    membership list once."""

    policy: TenantPolicy
    stale_after: timedelta
    memo: dict[
        tuple[str, ...], tuple[frozenset[str], drift.PolicyChecker | None, Origin | None]
    ] = field(default_factory=dict)

    def scope_set(self, scope_ids: tuple[str, ...]) -> frozenset[str]:
        return self._resolve(scope_ids)[0]

    def evaluate(
        self, scope_ids: tuple[str, ...], device: Sequence[Any], now: datetime
    ) -> drift.Evaluation:
        """Evaluate a row of ``_DEVICE_COLUMNS``."""
        _, effective, origin = self._resolve(scope_ids)
        _, mode, checkin, seq, inventory = device[:5]
        return drift.evaluate(
            effective,
            inventory if seq >= 0 else None,
            last_checkin_at=checkin,
            now=now,
            stale_after=self.stale_after,
            unmanaged=mode == "unmanaged",
            managers_origin=origin,
        )

    def _resolve(
        self, scope_ids: tuple[str, ...]
    ) -> tuple[frozenset[str], drift.PolicyChecker | None, Origin | None]:
        hit = self.memo.get(scope_ids)
        if hit is None:
            ids = list(scope_ids)
            scope_set = self.policy.scope_set(ids)
            effective = self.policy.effective(ids)
            checker = None if effective is None else drift.PolicyChecker(effective)
            hit = (scope_set, checker, managers_origin(self.policy, scope_set))
            self.memo[scope_ids] = hit
        return hit


def _violation_rows(
    tenant_id: str, device_id: str, findings: Iterable[drift.Finding]
) -> list[dict[str, Any]]:
    keys = ("tenant_id", "device_id", "category", "manager", "package")
    return [
        dict(zip(keys, (tenant_id, device_id, f.category, f.manager, f.package), strict=True))
        for f in findings
    ]


def _count_rows(
    tenant_id: str, counts: Mapping[tuple[str, str, str], int], now: datetime
) -> list[dict[str, Any]]:
    keys = ("scope_id", "kind", "key", "tenant_id", "count", "updated_at")
    return [
        dict(zip(keys, (scope_id, kind, key, tenant_id, n, now), strict=True))
        for (scope_id, kind, key), n in sorted(counts.items())
    ]


async def _lock_counts(session: AsyncSession, tenant_id: str) -> None:
    """Serialize count changes of one tenant with its rebuild (PostgreSQL).

    Without it a rebuild that read the records before a concurrent evaluation committed would
    overwrite that evaluation's delta. SQLite writers are serialized already.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"scope_counts:{tenant_id}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _upsert(session: AsyncSession, table: Table, *, add: str | None = None) -> Any:
    """``INSERT … ON CONFLICT (primary key) DO UPDATE`` for this dialect.

    Every non-key column takes the new value, except ``add``, which adds it (a count delta).
    """
    dialect = session.get_bind().dialect.name
    cached = _UPSERTS.get((dialect, table.name, add))
    if cached is not None:
        return cached
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    keys = [c.name for c in table.primary_key.columns]
    values = {
        c.name: (table.c[c.name] + stmt.excluded[c.name])
        if c.name == add
        else stmt.excluded[c.name]
        for c in table.columns
        if c.name not in keys
    }
    upsert = _UPSERTS[dialect, table.name, add] = stmt.on_conflict_do_update(
        index_elements=keys, set_=values
    )
    return upsert


_UPSERTS: dict[tuple[str, str, str | None], Any] = {}
"""Built once per dialect: building the statement costs more than running it."""


def _count_deltas(
    old_state: str | None,
    old_categories: Iterable[str],
    new_state: str,
    new_categories: Iterable[str],
) -> dict[tuple[str, str], int]:
    deltas: Counter[tuple[str, str]] = Counter()
    if old_state is not None:
        deltas["state", old_state] -= 1
        for category in set(old_categories):
            deltas["category", category] -= 1
    deltas["state", new_state] += 1
    for category in set(new_categories):
        deltas["category", category] += 1
    return {k: v for k, v in deltas.items() if v != 0}


def _record(
    device_id: str, evaluation: drift.Evaluation, at: datetime, violations: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "state": evaluation.state,
        "policy_version": evaluation.policy_version or None,
        "evaluated_at": at.isoformat(),
        "reason": evaluation.reason,
        "violations": violations,
    }


async def evaluate_device(
    session: AsyncSession,
    state: ServiceState,
    tenant_id: str,
    device_id: str,
    *,
    actor: str,
    correlation_id: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Evaluate one device in the caller's write transaction and store the result.

    Replaces the device's compliance record (and its violation rows, when the findings
    changed), moves the scope counts of every scope in its scope set (ancestors included)
    from its previous state and categories to the new ones, and appends
    ``compliance_evaluated`` (and ``drift_detected`` when there are findings).

    Args:
        session: a session in a write transaction (``ServiceState.writing``).
        state: the service state.
        tenant_id: the device's tenant.
        device_id: the device.
        actor: who caused the evaluation, for the events.
        correlation_id: the request id, for the events.
        now: evaluation time; defaults to the current time.

    Returns:
        The stored record as JSON (see ``record_json``).
    """
    now = now or utcnow()
    policy = await load_tenant_policy(session, state, tenant_id)
    await _lock_counts(session, tenant_id)
    # Core statements throughout: this runs inside every inventory report, and the ORM's unit
    # of work cost more than the statements themselves.
    memberships = (
        select(func.aggregate_strings(DeviceScope.scope_id, ","))
        .where(DeviceScope.device_id == Device.id)
        .scalar_subquery()
    )
    device = (
        await session.execute(
            select(*_DEVICE_COLUMNS, memberships, _RECORDS.c.state, _RECORDS.c.violations)
            .outerjoin(_RECORDS, _RECORDS.c.device_id == Device.id)
            .where(Device.id == device_id, Device.tenant_id == tenant_id)
        )
    ).one()
    joined, old_state, old_violations = device[-3], device[-2], device[-1] or []
    scope_ids = tuple(sorted(joined.split(","))) if joined else ()
    evaluator = _Evaluator(policy, state.settings.stale_checkin_after)
    evaluation = evaluator.evaluate(scope_ids, device, now)
    violations = [f.as_dict() for f in evaluation.findings]
    await session.execute(
        _upsert(session, _RECORDS),
        {
            "device_id": device_id,
            "tenant_id": tenant_id,
            "state": evaluation.state,
            "policy_version": evaluation.policy_version,
            "reason": evaluation.reason,
            "violations": violations,
            "evaluated_at": now,
        },
    )
    if violations != old_violations:
        await session.execute(delete(_VIOLATIONS).where(_VIOLATIONS.c.device_id == device_id))
        if violations:
            rows = _violation_rows(tenant_id, device_id, evaluation.findings)
            await session.execute(insert(_VIOLATIONS), rows)
    old_categories = {v["category"] for v in old_violations}
    deltas = _count_deltas(old_state, old_categories, evaluation.state, evaluation.categories)
    scope_set = evaluator.scope_set(scope_ids)
    if deltas and scope_set:
        counts = {
            (scope_id, kind, key): delta
            for scope_id in scope_set
            for (kind, key), delta in deltas.items()
        }
        await session.execute(
            _upsert(session, _COUNTS, add="count"), _count_rows(tenant_id, counts, now)
        )
    await append_events(
        session,
        tenant_id,
        _device_events(
            evaluation, violations, old_state, scope_ids, device_id, actor, correlation_id, now
        ),
    )
    return _record(device_id, evaluation, now, violations)


def _device_events(
    evaluation: drift.Evaluation,
    violations: list[dict[str, Any]],
    old_state: str | None,
    scope_ids: Sequence[str],
    device_id: str,
    actor: str,
    correlation_id: str,
    now: datetime,
) -> list[NewEvent]:
    common: dict[str, Any] = {
        "action": "compliance.evaluate",
        "outcome": evaluation.state,
        "actor": actor,
        "correlation_id": correlation_id,
        "scope_id": scope_ids[0] if scope_ids else None,
        "device_id": device_id,
        "policy_version": evaluation.policy_version or None,
        "timestamp": now,
    }
    data = {
        "state": evaluation.state,
        "previous_state": old_state,
        "reason": evaluation.reason,
        "violations": len(violations),
    }
    events = [NewEvent(type="compliance_evaluated", data=data, **common)]
    if evaluation.findings:
        managers = {f.manager for f in evaluation.findings}
        drifted = {
            "categories": dict(Counter(f.category for f in evaluation.findings)),
            "violations": [
                {k: v[k] for k in ("category", "manager", "package", "action")}
                for v in violations[:50]
            ],
        }
        manager = next(iter(managers)) if len(managers) == 1 else None
        events.append(NewEvent(type="drift_detected", manager=manager, data=drifted, **common))
    return events


async def withdraw_device(
    session: AsyncSession, state: ServiceState, tenant_id: str, device_id: str
) -> None:
    """Take a device out of the scope counts and drop its record, in the caller's transaction.

    Call it before a device's scope memberships change (then ``evaluate_device`` after the
    change counts it under the new scopes) or before the device is deleted: the counts are
    kept per scope, so they must be moved while the old memberships are still known.
    """
    await _lock_counts(session, tenant_id)
    record = (
        await session.execute(
            select(_RECORDS.c.state, _RECORDS.c.violations).where(_RECORDS.c.device_id == device_id)
        )
    ).first()
    if record is None:
        return
    policy = await load_tenant_policy(session, state, tenant_id)
    scope_set = policy.scope_set(await device_scope_ids(session, device_id))
    deltas = {("state", record.state): -1}
    deltas.update((("category", v["category"]), -1) for v in record.violations)
    counts = {(s, kind, key): d for s in scope_set for (kind, key), d in deltas.items()}
    if counts:
        await session.execute(
            _upsert(session, _COUNTS, add="count"), _count_rows(tenant_id, counts, utcnow())
        )
    await session.execute(delete(_VIOLATIONS).where(_VIOLATIONS.c.device_id == device_id))
    await session.execute(delete(_RECORDS).where(_RECORDS.c.device_id == device_id))
