"""Control plane compliance recompute: background jobs that re-evaluate a whole tenant.

A job re-evaluates every device in chunks (each its own write transaction), then rebuilds the
tenant's pre-aggregated scope counts in one pass; a sweep moves stale check-ins to unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import drift
from controlplane.compliance import (
    _COUNTS,
    _DEVICE_COLUMNS,
    _RECORDS,
    _VIOLATIONS,
    SYSTEM_ACTOR,
    _count_rows,
    _Evaluator,
    _lock_counts,
    _violation_rows,
    evaluate_device,
)
from controlplane.events import NewEvent, append_events
from controlplane.joblocks import tenant_locks
from controlplane.models import (
    ComplianceRecord,
    Device,
    DeviceScope,
    Job,
    new_id,
    utcnow,
)
from controlplane.policy_store import load_tenant_policy
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

JOB_KIND: Final = "compliance_recompute"
"""``Job.kind`` of a tenant-wide recompute."""

CHUNK_SIZE: Final = 1000
"""Devices per recompute transaction: large enough to amortize statements, small enough that
an inventory report waits at most one chunk for the SQLite write lock."""

POLL_SECONDS: Final = 5.0
"""How often the worker looks for jobs without a wake-up (jobs queued by another replica)."""

STALE_SWEEP_SECONDS: Final = 300.0
"""How often the worker re-evaluates devices whose check-in went stale since their last
evaluation; nothing else would move them to ``unknown``."""


async def schedule_recompute(
    session: AsyncSession,
    state: ServiceState,
    tenant_id: str,
    *,
    reason: str,
    actor: str,
    correlation_id: str,
) -> str:
    """Queue a tenant-wide recompute in the caller's transaction and return the job id.

    The caller commits and then calls ``state.wake("recompute")``; pending jobs of one tenant
    are run together, since one recompute after the last change covers them all.
    """
    del state  # Part of the signature so a later queue (another table, a broker) fits it.
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        kind=JOB_KIND,
        status="pending",
        result={"reason": reason[:200], "requested_by": actor, "correlation_id": correlation_id},
        created_at=utcnow(),
    )
    session.add(job)
    await session.flush()
    return job.id


@dataclass(frozen=True, slots=True)
class RecomputeResult:
    """What a tenant-wide recompute did."""

    devices: int
    """Devices evaluated."""
    by_state: dict[str, int]
    """Devices per compliance state."""
    by_category: dict[str, int]
    """Devices with at least one finding per drift category."""
    violations: int
    """Findings written."""
    evaluate_seconds: float
    """Time spent reading, evaluating and writing device records."""
    rebuild_seconds: float
    """Time spent rebuilding the scope counts."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "by_state": self.by_state,
            "by_category": self.by_category,
            "violations": self.violations,
            "evaluate_ms": round(self.evaluate_seconds * 1000),
            "rebuild_ms": round(self.rebuild_seconds * 1000),
        }


async def recompute_tenant(
    state: ServiceState,
    tenant_id: str,
    *,
    chunk_size: int = CHUNK_SIZE,
    now: datetime | None = None,
) -> RecomputeResult:
    """Re-evaluate every device of a tenant, then rebuild its scope counts.

    Each chunk is its own write transaction, so inventory reports interleave with a long
    recompute; the chunk re-reads its devices inside the transaction, so a report that landed
    earlier is never overwritten by an older evaluation. A device registered after the
    recompute started is left to its own first evaluation.
    """
    now = now or utcnow()
    started = time.perf_counter()
    async with state.sessions() as session:
        policy = await load_tenant_policy(session, state, tenant_id)
        ids = list(
            (
                await session.execute(
                    select(Device.id).where(Device.tenant_id == tenant_id).order_by(Device.id)
                )
            ).scalars()
        )
    evaluator = _Evaluator(policy, state.settings.stale_checkin_after)
    tally = _Tally()
    for start in range(0, len(ids), chunk_size):
        with _gc_paused():
            chunk = ids[start : start + chunk_size]
            await _recompute_chunk(state, evaluator, tenant_id, chunk, now, tally)
        # Let requests that queued behind this chunk run before the next one starts.
        await asyncio.sleep(0)
    evaluated = time.perf_counter()
    await rebuild_scope_counts(state, tenant_id, now=now)
    return RecomputeResult(
        tally.devices,
        dict(tally.by_state),
        dict(tally.by_category),
        tally.violations,
        evaluated - started,
        time.perf_counter() - evaluated,
    )


@dataclass
class _Tally:
    devices: int = 0
    violations: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one chunk.

    A chunk decodes a few hundred thousand inventory rows that live until it is written; the
    collections their allocation triggers traverse them again and again, which measured at
    about a third of a recompute. The rows hold no cycles, so reference counting frees them.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


async def _recompute_chunk(
    state: ServiceState,
    evaluator: _Evaluator,
    tenant_id: str,
    ids: list[str],
    now: datetime,
    tally: _Tally,
) -> None:
    """Evaluate and store one chunk of a tenant's devices.

    Statements select by primary key only (the ids are the tenant's already): with a tenant
    filter beside it, SQLite without statistics picks the tenant index and sorts the whole
    remaining fleet for every chunk, which made a recompute quadratic.
    """
    async with state.writing() as session:
        rows = (
            await session.execute(
                select(*_DEVICE_COLUMNS)
                .where(Device.id.in_(ids))
                # PostgreSQL: an inventory report committing between this read and the
                # writes below would otherwise be overwritten by this older evaluation.
                # SQLite renders no FOR SHARE; its writers are serialized already.
                .with_for_update(read=True)
            )
        ).all()
        members = await _memberships(session, DeviceScope.device_id.in_(ids))
        records: list[dict[str, Any]] = []
        findings: list[dict[str, Any]] = []
        for row in rows:
            device_id = row[0]
            evaluation = evaluator.evaluate(members.get(device_id, ()), row, now)
            records.append(
                {
                    "device_id": device_id,
                    "tenant_id": tenant_id,
                    "state": evaluation.state,
                    "policy_version": evaluation.policy_version,
                    "reason": evaluation.reason,
                    "violations": [f.as_dict() for f in evaluation.findings],
                    "evaluated_at": now,
                }
            )
            findings.extend(_violation_rows(tenant_id, device_id, evaluation.findings))
            tally.by_state[evaluation.state] += 1
            tally.by_category.update(evaluation.categories)
        for table in (_RECORDS, _VIOLATIONS):
            await session.execute(delete(table).where(table.c.device_id.in_(ids)))
        if records:
            await session.execute(insert(_RECORDS), records)
        if findings:
            await session.execute(insert(_VIOLATIONS), findings)
    tally.devices += len(records)
    tally.violations += len(findings)


async def _memberships(
    session: AsyncSession, where: ColumnElement[bool]
) -> dict[str, tuple[str, ...]]:
    """Each device's direct scopes, sorted (the key ``_Evaluator`` memoizes on)."""
    stmt = select(DeviceScope.device_id, DeviceScope.scope_id).where(where)
    members: defaultdict[str, list[str]] = defaultdict(list)
    for device_id, scope_id in await session.execute(stmt):
        members[device_id].append(scope_id)
    return {device_id: tuple(sorted(ids)) for device_id, ids in members.items()}


async def rebuild_scope_counts(
    state: ServiceState, tenant_id: str, *, now: datetime | None = None
) -> int:
    """Recount a tenant's scope counts from its records in one transaction; returns the rows.

    Devices are grouped by membership list first, so each distinct list is expanded to its
    scope set once rather than once per device.
    """
    now = now or utcnow()
    async with state.writing() as session:
        await _lock_counts(session, tenant_id)
        policy = await load_tenant_policy(session, state, tenant_id)
        members = await _memberships(session, DeviceScope.tenant_id == tenant_id)
        states = await session.execute(
            select(_RECORDS.c.device_id, _RECORDS.c.state).where(_RECORDS.c.tenant_id == tenant_id)
        )
        grouped: Counter[tuple[tuple[str, ...], str, str]] = Counter()
        for device_id, device_state in states:
            grouped[members.get(device_id, ()), "state", device_state] += 1
        categories = await session.execute(
            select(_VIOLATIONS.c.device_id, _VIOLATIONS.c.category)
            .where(_VIOLATIONS.c.tenant_id == tenant_id)
            .distinct()
        )
        for device_id, category in categories:
            grouped[members.get(device_id, ()), "category", category] += 1
        counts: Counter[tuple[str, str, str]] = Counter()
        expanded: dict[tuple[str, ...], frozenset[str]] = {}
        for (scope_ids, kind, key), n in grouped.items():
            scope_set = expanded.get(scope_ids)
            if scope_set is None:
                scope_set = expanded[scope_ids] = policy.scope_set(list(scope_ids))
            for scope_id in scope_set:
                counts[scope_id, kind, key] += n
        # Every scope gets its four state rows, so an empty subtree still has an updated_at.
        for scope_id in policy.scopes:
            for key in drift.STATES:
                counts[scope_id, "state", key] += 0
        await session.execute(delete(_COUNTS).where(_COUNTS.c.tenant_id == tenant_id))
        if counts:
            await session.execute(insert(_COUNTS), _count_rows(tenant_id, counts, now))
    return len(counts)


async def run_next_job(state: ServiceState) -> bool:
    """Claim every pending recompute job of one tenant, run it, record the outcome.

    On PostgreSQL the worker first takes the tenant's advisory lock (``joblocks``) and holds it
    until the jobs are finished, so a tenant's jobs run on one replica at a time and a job left
    ``running`` by a dead replica can be told from one running elsewhere.

    Returns:
        Whether there was a job (so the caller loops until the queue is empty).
    """
    async with state.sessions() as session:
        tenants = list(
            (
                await session.execute(
                    select(Job.tenant_id)
                    .where(Job.kind == JOB_KIND, Job.status == "pending")
                    .group_by(Job.tenant_id)
                    .order_by(func.min(Job.created_at))
                    .limit(20)
                )
            ).scalars()
        )
    async with tenant_locks(state.engine, state.settings.database_schema) as locks:
        for tenant_id in tenants:
            if not await locks.try_lock(tenant_id):
                continue  # another replica is recomputing this tenant; it takes these next
            try:
                return await _run_tenant(state, tenant_id)
            finally:
                await locks.unlock(tenant_id)
    return False


async def _run_tenant(state: ServiceState, tenant_id: str) -> bool:
    async with state.writing() as session:
        # One conditional UPDATE claims them, so two replicas never run the same job.
        claimed = list(
            await session.execute(
                update(Job)
                .where(Job.tenant_id == tenant_id, Job.kind == JOB_KIND, Job.status == "pending")
                .values(status="running")
                .returning(Job.id, Job.result)
                .execution_options(synchronize_session=False)
            )
        )
    if not claimed:
        return True
    correlation_id = f"recompute-{uuid.uuid4().hex[:12]}"
    try:
        result = await recompute_tenant(state, tenant_id)
    except Exception as exc:
        log.exception(
            "compliance recompute failed",
            extra={"tenant_id": tenant_id, "jobs": [j for j, _ in claimed]},
        )
        await _finish(
            state, tenant_id, claimed, "failed", {"error": type(exc).__name__}, correlation_id
        )
        return True
    await _finish(state, tenant_id, claimed, "done", result.as_dict(), correlation_id)
    log.info(
        "compliance recompute done",
        extra={"tenant_id": tenant_id, "devices": result.devices, "jobs": len(claimed)},
    )
    return True


async def _finish(
    state: ServiceState,
    tenant_id: str,
    claimed: Sequence[tuple[str, Mapping[str, Any]]],
    status: str,
    outcome: dict[str, Any],
    correlation_id: str,
) -> None:
    ids = [job_id for job_id, _ in claimed]
    async with state.writing() as session:
        finished = utcnow()
        for job_id, requested in claimed:
            await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status=status,
                    finished_at=finished,
                    result={**requested, **outcome, "jobs_coalesced": ids},
                )
                .execution_options(synchronize_session=False)
            )
        # One summary event per run: a fleet-wide recompute would otherwise append tens of
        # thousands of chained events.
        common: dict[str, Any] = {
            "action": "compliance.recompute",
            "actor": SYSTEM_ACTOR,
            "correlation_id": correlation_id,
            "task_id": ids[0],
        }
        events = [
            NewEvent(
                type="compliance_evaluated", outcome=status, data={"jobs": ids, **outcome}, **common
            )
        ]
        if status == "done" and outcome.get("by_category"):
            drifted = {"jobs": ids, "by_category": outcome["by_category"]}
            events.append(NewEvent(type="drift_detected", outcome="drift", data=drifted, **common))
        await append_events(session, tenant_id, events)


async def sweep_stale(state: ServiceState, *, now: datetime | None = None) -> int:
    """Re-evaluate devices whose check-in went stale since they were last evaluated.

    Returns:
        How many devices were re-evaluated (and so became ``unknown``).
    """
    now = now or utcnow()
    cutoff = now - state.settings.stale_checkin_after
    async with state.sessions() as session:
        rows = (
            await session.execute(
                select(Device.tenant_id, Device.id)
                .join(ComplianceRecord, ComplianceRecord.device_id == Device.id)
                .where(ComplianceRecord.state != "unknown", Device.last_checkin_at < cutoff)
                .order_by(Device.tenant_id, Device.id)
                .limit(CHUNK_SIZE)
            )
        ).all()
    by_tenant: defaultdict[str, list[str]] = defaultdict(list)
    for tenant_id, device_id in rows:
        by_tenant[tenant_id].append(device_id)
    correlation_id = f"stale-sweep-{uuid.uuid4().hex[:12]}"
    for tenant_id, device_ids in by_tenant.items():
        async with state.writing() as session:
            for device_id in device_ids:
                await evaluate_device(
                    session,
                    state,
                    tenant_id,
                    device_id,
                    actor=SYSTEM_ACTOR,
                    correlation_id=correlation_id,
                    now=now,
                )
    return len(rows)


async def requeue_interrupted(state: ServiceState) -> int:
    """Queue again the jobs a dead worker left ``running``; how many.

    On SQLite this process is the only worker, so at its start every running job is
    interrupted. On PostgreSQL a running job is interrupted when its tenant's advisory lock is
    free (a live worker holds it from claim to finish). A recompute is idempotent, so running
    it again is safe.
    """
    async with state.sessions() as session:
        tenants = list(
            (
                await session.execute(
                    select(Job.tenant_id)
                    .where(Job.kind == JOB_KIND, Job.status == "running")
                    .distinct()
                )
            ).scalars()
        )
    requeued = 0
    async with tenant_locks(state.engine, state.settings.database_schema) as locks:
        for tenant_id in tenants:
            if not await locks.try_lock(tenant_id):
                continue
            try:
                async with state.writing() as session:
                    result = await session.execute(
                        update(Job)
                        .where(
                            Job.tenant_id == tenant_id,
                            Job.kind == JOB_KIND,
                            Job.status == "running",
                        )
                        .values(status="pending")
                        .execution_options(synchronize_session=False)
                    )
                    requeued += result.rowcount or 0  # type: ignore[attr-defined]
            finally:
                await locks.unlock(tenant_id)
    if requeued:
        log.warning("requeued interrupted recompute jobs", extra={"jobs": requeued})
    return requeued


async def _run_forever(state: ServiceState) -> None:
    wake = state.wakeups.setdefault("recompute", asyncio.Event())
    loop = asyncio.get_running_loop()
    next_sweep = loop.time()
    await requeue_interrupted(state)
    while True:
        # Cleared before looking, so a wake-up that arrives during a job is not lost.
        wake.clear()
        try:
            while await run_next_job(state):
                pass
            if loop.time() >= next_sweep:
                await sweep_stale(state)
                if state.engine.dialect.name == "postgresql":
                    await requeue_interrupted(state)  # another replica may have died
                next_sweep = loop.time() + STALE_SWEEP_SECONDS
        except Exception:
            log.exception("compliance worker iteration failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), POLL_SECONDS)


async def recompute_worker(state: ServiceState) -> AsyncIterator[None]:
    """Background duty (an aiohttp cleanup context): run queued recomputes and stale sweeps."""
    task = asyncio.create_task(_run_forever(state), name="compliance-recompute")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
