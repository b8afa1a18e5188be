"""Group commit of stand-alone audit events: every acknowledged append is stored, in chain."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from controlplane.audit_writer import AuditWriter, running
from controlplane.events import NewEvent, verify_chain
from controlplane.models import Event
from tests.controlplane.client import ControlPlane


def decision(n: int) -> NewEvent:
    return NewEvent(
        type="enforcement_decided",
        action="enforcement.check",
        outcome="denied",
        actor="fleet-agent",
        correlation_id=f"req-{n}",
        data={"n": n},
    )


async def count(cp: ControlPlane, tenant_id: str) -> int:
    async with cp.state.sessions() as session:
        return int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(Event)
                    .where(Event.tenant_id == tenant_id, Event.type == "enforcement_decided")
                )
            ).scalar_one()
        )


async def test_concurrent_appends_share_commits_and_keep_the_chain(cp: ControlPlane) -> None:
    a, b = await cp.tenant(), await cp.tenant()
    assert cp.state.audit is not None  # the service runs its writer as a background duty
    await asyncio.gather(
        *(cp.state.audit.append(a.id if n % 3 else b.id, decision(n)) for n in range(300))
    )
    assert await count(cp, a.id) == 200
    assert await count(cp, b.id) == 100
    for tenant in (a, b):
        async with cp.state.sessions() as session:
            assert (await verify_chain(session, tenant.id)).ok


async def test_close_commits_what_is_queued(cp: ControlPlane) -> None:
    t = await cp.tenant()
    async with running(cp.state) as writer:
        waiting = [asyncio.create_task(writer.append(t.id, decision(n))) for n in range(50)]
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert await count(cp, t.id) == 50


async def test_a_failed_batch_reports_to_every_waiter(cp: ControlPlane) -> None:
    writer = AuditWriter(cp.state)
    task = asyncio.create_task(writer.run())
    try:
        # no such tenant: the foreign key makes the whole batch fail
        results = await asyncio.gather(
            *(writer.append("ten_missing", decision(n)) for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results)
    finally:
        writer.close()
        await task
    assert await count(cp, "ten_missing") == 0
