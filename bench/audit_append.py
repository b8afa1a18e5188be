"""Benchmark: hash-chained audit appends on SQLite, beside plain inserts of the same rows.

Appends events to a temporary, migrated SQLite database (WAL, as the service runs it) with
``append_event`` (one event per call) and ``append_events`` (a batch per call), one and 100
events per transaction, beside the same rows inserted without the chain (no head move, no
hashing) in the same run. For scale it prints the chain's CPU cost alone and the cost of one
SQL round trip, then walks a long chain with ``verify_chain``.

    .venv/bin/python bench/audit_append.py [--events 5000] [--verify-events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import cast

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from controlplane import db
from controlplane.audit_writer import running
from controlplane.events import (
    GENESIS,
    NewEvent,
    append_event,
    append_events,
    event_hash,
    hashed_fields,
    verify_chain,
)
from controlplane.models import Event, Tenant, utcnow
from controlplane.ratelimit import RateLimiter
from controlplane.settings import ControlPlaneSettings
from controlplane.signing import Signer
from controlplane.state import ServiceState

BATCH = 100


def machine() -> str:
    """One line naming the machine and the software the figures come from."""
    return (
        f"{platform.platform()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"SQLite {sqlite3.sqlite_version}"
    )


def new_event(n: int) -> NewEvent:
    """A realistic event: a device's compliance evaluation."""
    return NewEvent(
        type="compliance_evaluated",
        action="compliance.evaluate",
        outcome="non_compliant" if n % 3 == 0 else "compliant",
        actor="controlplane",
        correlation_id=f"bench-{n}",
        scope_id="scp_bench",
        device_id=f"dev_{n % 500:020d}",
        policy_version="base@3",
        data={"violations": n % 3, "reason": "evaluated after inventory report"},
    )


Append = Callable[[AsyncSession, str, range], Awaitable[None]]


async def one_by_one(session: AsyncSession, tenant: str, ns: range) -> None:
    """``append_event`` once per event."""
    for n in ns:
        e = new_event(n)
        await append_event(
            session,
            tenant_id=tenant,
            type=e.type,
            action=e.action,
            outcome=e.outcome,
            actor=e.actor,
            correlation_id=e.correlation_id,
            scope_id=e.scope_id,
            device_id=e.device_id,
            policy_version=e.policy_version,
            data=e.data,
        )


async def batched(session: AsyncSession, tenant: str, ns: range) -> None:
    """``append_events`` once for the whole transaction."""
    await append_events(session, tenant, [new_event(n) for n in ns])


async def plain(session: AsyncSession, tenant: str, ns: range) -> None:
    """The same rows in the same multi-row INSERT, with no chain: no head, no hashing."""
    table = cast(Table, Event.__table__)
    rows = []
    for n in ns:
        e = asdict(new_event(n))
        rows.append(
            {
                **e,
                "tenant_id": tenant,
                "seq": n + 1,
                "timestamp": utcnow(),
                "prev_hash": GENESIS,
                "hash": GENESIS,
            }
        )
    conn = await session.connection()
    await conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows)


async def run(
    sessions: async_sessionmaker[AsyncSession],
    tenant: str,
    append: Append,
    events: int,
    per_transaction: int,
) -> float:
    """Events per second appending ``events`` events, ``per_transaction`` per transaction."""
    start = time.perf_counter()
    for first in range(0, events, per_transaction):
        async with sessions.begin() as session:
            await append(session, tenant, range(first, min(first + per_transaction, events)))
    return events / (time.perf_counter() - start)


def hashing_rate(events: int) -> float:
    """Events per second through the chain's CPU work alone (canonical JSON and sha256)."""
    rows = [
        Event(tenant_id="ten_x", seq=n + 1, **{**asdict(new_event(n)), "timestamp": utcnow()})
        for n in range(events)
    ]
    start = time.perf_counter()
    prev = GENESIS
    for row in rows:
        prev = event_hash(hashed_fields(row), prev)
    return events / (time.perf_counter() - start)


async def round_trip(engine: AsyncEngine) -> float:
    """Seconds per ``SELECT 1`` through SQLAlchemy and aiosqlite: the floor under any statement."""
    async with engine.connect() as conn:
        start = time.perf_counter()
        for _ in range(500):
            await conn.execute(text("SELECT 1"))
        return (time.perf_counter() - start) / 500


async def group_commit(
    engine: AsyncEngine, tmp: Path, tenant: str, events: int, producers: int
) -> tuple[float, float, float]:
    """Events per second, p50 and p99 ms, with ``producers`` concurrent callers of the
    group-commit ``AuditWriter``, each waiting for its own event's commit."""
    state = ServiceState(
        settings=ControlPlaneSettings(data_dir=tmp),
        engine=engine,
        sessions=db.session_factory(engine),
        signer=Signer.load_or_create(tmp / "key.pem"),
        limiter=RateLimiter(1.0, 1),
    )
    latencies: list[float] = []
    async with running(state) as writer:

        async def producer(first: int) -> None:
            for n in range(first, events, producers):
                start = time.perf_counter()
                await writer.append(tenant, new_event(n))
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(producer(i) for i in range(producers)))
        rate = events / (time.perf_counter() - start)
    latencies.sort()
    return rate, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000, help="events per measurement")
    parser.add_argument(
        "--verify-events", type=int, default=100_000, help="chain length to verify (0 skips)"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        await db.migrate(engine)
        sessions = db.session_factory(engine)
        figures: list[tuple[str, Append, int]] = [
            ("plain insert, 1 per transaction", plain, 1),
            ("append_event, 1 per transaction", one_by_one, 1),
            (f"plain insert, {BATCH} per transaction", plain, BATCH),
            (f"append_event x {BATCH} per transaction", one_by_one, BATCH),
            (f"append_events({BATCH}) per transaction", batched, BATCH),
        ]
        async with sessions.begin() as session:
            session.add_all(Tenant(id=f"ten_{n}", name=f"t{n}") for n in range(len(figures) + 2))
        await run(sessions, "ten_0", one_by_one, 500, 1)  # warm up caches and the WAL file
        print(f"{args.events} events per measurement, SQLite WAL, synchronous=NORMAL")
        rates = []
        for n, (label, append, per_tx) in enumerate(figures, start=1):
            rates.append(await run(sessions, f"ten_{n}", append, args.events, per_tx))
            print(f"  {label:<40} {rates[-1]:>9,.0f} events/s")
        for producers in (1, 16, 64):
            async with sessions.begin() as session:
                session.add(Tenant(id=f"ten_gc{producers}", name=f"gc{producers}"))
            rate, p50, p99 = await group_commit(
                engine, Path(tmp), f"ten_gc{producers}", args.events, producers
            )
            label = f"AuditWriter, {producers} concurrent callers"
            print(
                f"  {label:<40} {rate:>9,.0f} events/s  (each waits: p50 {p50:.1f} ms,"
                f" p99 {p99:.1f} ms)"
            )
        print(f"  chained at 1 per transaction: {rates[1] / rates[0]:.0%} of plain inserts")
        print(
            f"  chained at {BATCH} per transaction: {rates[3] / rates[2]:.0%} (per call),"
            f" {rates[4] / rates[2]:.0%} (batch) of plain inserts"
        )
        print(f"  for scale: hashing alone {hashing_rate(args.events):,.0f} events/s;", end=" ")
        print(f"one SQL statement round trip {await round_trip(engine) * 1e6:,.0f} us")
        if args.verify_events:
            verify = f"ten_{len(figures) + 1}"
            await run(sessions, verify, batched, args.verify_events, 1000)
            start = time.perf_counter()
            async with sessions() as session:
                report = await verify_chain(session, verify)
            took = time.perf_counter() - start
            assert report.ok, report
            print(
                f"  verify_chain over {report.checked:,} events: {took:.2f} s"
                f" ({report.checked / took:,.0f} events/s)"
            )
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
