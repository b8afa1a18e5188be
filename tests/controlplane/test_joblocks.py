"""Recompute jobs across control-plane replicas: a job left running by a dead replica is
queued again, one running on a live replica is left alone (PostgreSQL advisory locks)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy import insert, select

from controlplane.joblocks import lock_key
from controlplane.models import Job
from controlplane.recompute import JOB_KIND, requeue_interrupted
from tests.conftest import PG_URL
from tests.controlplane.client import ControlPlane
from tests.controlplane.test_compliance import finished


async def status(cp: ControlPlane, job_id: str) -> str:
    async with cp.state.sessions() as session:
        return str((await session.execute(select(Job.status).where(Job.id == job_id))).scalar_one())


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_running_job_is_requeued_only_when_no_replica_holds_its_tenant(
    cp: ControlPlane, backend: str
) -> None:
    del backend
    tenant = await cp.tenant()
    job_id = "job_" + uuid.uuid4().hex[:20]
    # Another replica's worker, alive, holds the tenant's lock from its claim (taken first, as
    # a worker does, so this server's own sweep never sees the job unheld): it is left alone.
    other = await asyncpg.connect(PG_URL)
    try:
        key = lock_key(tenant.id, cp.settings.database_schema)
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", key)
        async with cp.state.writing() as session:  # the job that replica is running
            await session.execute(
                insert(Job).values(id=job_id, tenant_id=tenant.id, kind=JOB_KIND, status="running")
            )
        assert await requeue_interrupted(cp.state) == 0
        assert await status(cp, job_id) == "running"
    finally:
        await other.close()  # that replica dies: its session ends, the lock with it
    assert await requeue_interrupted(cp.state) == 1
    cp.state.wake("recompute")
    job = await finished(tenant.owner, job_id)
    assert job["status"] == "done"
