"""Benchmark: evaluating a rollout's gates over a 50,000-device ring, on SQLite.

Builds a temporary, migrated SQLite database (WAL, as the service runs it) with a deployment
intent whose current ring holds ``--devices`` installs: mostly succeeded, some failed, some
pending (a few of them past their site class's time to compliance), across the three site
classes; and a second intent whose ring was just published (the same devices, all pending).
Then times, in the same run and on the same rows:

- baseline: ``SELECT COUNT(*)`` over the ring's installs (the least any gate could cost);
- ``measure_ring``, the two GROUP BY statements behind the health gates, on both rings (the
  fresh one is the most rows the overdue count can read);
- ``assess``: every gate the promote verb evaluates (ring aggregate, incidents, evidence pack,
  supply chain, risk and CAB approval, schedule), as ``controlplane.api.rollouts`` runs it;
- for contrast, the row-by-row way: every install row fetched and counted in Python.

    .venv/bin/python -m bench.gates [--devices 50000] [--runs 30] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from controlplane import db
from controlplane.evidence import pack_content, pack_digest
from controlplane.gating import assess
from controlplane.models import Device, Scope, Tenant, utcnow
from controlplane.models_release import (
    Application,
    AppVersion,
    Artifact,
    DeploymentIntent,
    DeviceInstall,
    EvidencePack,
    RiskAssessment,
    Rollout,
)
from controlplane.release import EVIDENCE_PARTS
from controlplane.rollouts import measure_ring
from controlplane.settings import ControlPlaneSettings

TENANT, SCOPE, APP, VERSION = "ten_bench", "scp_bench", "app_bench", "ver_bench"
INTENT, FRESH = "int_bench", "int_fresh"
"""A ring mostly reported, and a ring just published (every install pending)."""
RING = 3
SITE_CLASSES = (("online", 0.8), ("intermittent", 0.15), ("air_gapped", 0.05))


def machine() -> str:
    """One line naming the machine and the software the figures come from."""
    return (
        f"{platform.platform()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"SQLite {sqlite3.sqlite_version}"
    )


async def build(sessions: Any, devices: int, rng: random.Random) -> dict[str, int]:
    """The catalog rows and two intents at ``RING`` with their installs; returns status counts
    of the reported one (the fresh one's are all pending)."""
    now = utcnow()
    parts = {name: {"ref": f"{name}.json"} for name in EVIDENCE_PARTS}
    content = pack_content("bench", "1.0.0", VERSION, parts)
    async with sessions.begin() as session:
        session.add(Tenant(id=TENANT, name="bench", policy_revision=0))
        await session.flush()
        session.add(
            Scope(
                id=SCOPE,
                tenant_id=TENANT,
                parent_id=None,
                level="organization",
                name="bench",
                path=f"/{SCOPE}/",
            )
        )
        session.add(
            Application(
                id=APP,
                tenant_id=TENANT,
                name="bench",
                owner="bench",
                category="tool",
                support_tier="standard",
                allowed_scope_ids=[SCOPE],
                privileged=False,
                created_by="bench",
            )
        )
        await session.flush()
        session.add(
            AppVersion(
                id=VERSION,
                tenant_id=TENANT,
                application_id=APP,
                version="1.0.0",
                state="published",
                supported_os=["macos"],
                dependencies=[],
                requested_by="bench",
            )
        )
        await session.flush()
        session.add_all(
            [
                Artifact(
                    id="art_bench",
                    tenant_id=TENANT,
                    version_id=VERSION,
                    platform="macos",
                    sha256="a" * 64,
                    signing={},
                    scan_result="pass",
                    findings={},
                ),
                EvidencePack(
                    digest=pack_digest(content),
                    tenant_id=TENANT,
                    version_id=VERSION,
                    content=content,
                    created_by="bench",
                ),
                RiskAssessment(
                    id="risk_bench",
                    tenant_id=TENANT,
                    version_id=VERSION,
                    model_version="1.0",
                    inputs={},
                    factors=[],
                    score=30.0,
                    threshold=50.0,
                    requires_cab=False,
                    created_by="bench",
                ),
                *(
                    DeploymentIntent(
                        id=intent_id,
                        tenant_id=TENANT,
                        client_key=intent_id,
                        request_digest="0" * 64,
                        application_id=APP,
                        version_id=VERSION,
                        target_scope_id=SCOPE,
                        ring=RING,
                        schedule={},
                        constraints={},
                        state="active",
                        requested_by="bench",
                    )
                    for intent_id in (INTENT, FRESH)
                ),
            ]
        )
        await session.flush()
        session.add_all(
            Rollout(id=f"ro_{i}", tenant_id=TENANT, intent_id=i, ring=RING) for i in (INTENT, FRESH)
        )
    counts: dict[str, int] = {}
    classes = [c for c, _ in SITE_CLASSES]
    weights = [w for _, w in SITE_CLASSES]
    for start in range(0, devices, 5000):
        device_rows, install_rows = [], []
        for i in range(start, min(devices, start + 5000)):
            site_class = rng.choices(classes, weights)[0]
            draw = rng.random()
            status = "succeeded" if draw < 0.985 else "failed" if draw < 0.995 else "pending"
            counts[status] = counts.get(status, 0) + 1
            age = timedelta(hours=rng.choice((1, 12, 30, 100, 200)))
            device_rows.append(
                {
                    "id": f"dev_{i:08d}",
                    "tenant_id": TENANT,
                    "name": f"host-{i:06d}",
                    "platform": "macos",
                    "site_class": site_class,
                    "managed_mode": "managed-enforced",
                    "ring": RING,
                    "inventory_seq": -1,
                    "inventory": [],
                    "created_at": now,
                    "updated_at": now,
                }
            )
            install_rows += [
                {
                    "intent_id": INTENT,
                    "device_id": f"dev_{i:08d}",
                    "tenant_id": TENANT,
                    "ring": RING,
                    "site_class": site_class,
                    "status": status,
                    "assigned_at": now - age,
                    "reported_at": None if status == "pending" else now,
                },
                {
                    "intent_id": FRESH,
                    "device_id": f"dev_{i:08d}",
                    "tenant_id": TENANT,
                    "ring": RING,
                    "site_class": site_class,
                    "status": "pending",
                    "assigned_at": now - age,
                    "reported_at": None,
                },
            ]
        async with sessions.begin() as session:
            await session.execute(insert(Device), device_rows)
            await session.execute(insert(DeviceInstall), install_rows)
    return counts


async def timed(runs: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """Milliseconds per call over ``runs`` calls (after one warm-up), and the last result."""
    result = await call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = await call()
        times.append((time.perf_counter() - start) * 1000)
    return times, result


def line(label: str, times: list[float], baseline: float | None = None) -> str:
    median = statistics.median(times)
    p95 = sorted(times)[min(len(times) - 1, int(0.95 * len(times)))]
    ratio = f"   {median / baseline:5.1f}x baseline" if baseline else ""
    return f"{label:<50} median {median:8.2f} ms   p95 {p95:8.2f} ms{ratio}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = ControlPlaneSettings(data_dir=Path(tmp))
        engine = db.create_engine(settings.resolved_database_url())
        await db.migrate(engine)
        sessions = db.session_factory(engine)
        start = time.perf_counter()
        counts = await build(sessions, args.devices, random.Random(args.seed))
        built = time.perf_counter() - start
        print(machine())
        print(
            f"ring {RING}: {args.devices} installs {dict(sorted(counts.items()))}, "
            f"site classes {[c for c, _ in SITE_CLASSES]} (built in {built:.1f} s)"
        )
        now = utcnow()
        limits = settings.time_to_compliance
        async with sessions() as session:
            intent = await session.get_one(DeploymentIntent, INTENT)

            async def count() -> int:
                return (
                    await session.execute(
                        select(func.count()).where(
                            DeviceInstall.intent_id == INTENT, DeviceInstall.ring == RING
                        )
                    )
                ).scalar_one()

            async def measure() -> Any:
                return await measure_ring(session, TENANT, INTENT, RING, now, limits)

            async def measure_fresh() -> Any:
                return await measure_ring(session, TENANT, FRESH, RING, now, limits)

            async def full() -> Any:
                return await assess(session, settings, intent, now)

            async def row_by_row() -> int:
                rows = await session.execute(
                    select(DeviceInstall.status, DeviceInstall.site_class).where(
                        DeviceInstall.intent_id == INTENT, DeviceInstall.ring == RING
                    )
                )
                return sum(1 for status, _ in rows if status == "succeeded")

            base, total = await timed(args.runs, count)
            baseline = statistics.median(base)
            print(line(f"baseline  COUNT(*) over the ring ({total})", base))
            measured, m = await timed(args.runs, measure)
            print(line("measure_ring, ring mostly reported", measured, baseline))
            fresh, f = await timed(args.runs, measure_fresh)
            print(line("measure_ring, ring just published (all pending)", fresh, baseline))
            assessed, a = await timed(args.runs, full)
            print(line("assess: every gate the promote verb checks", assessed, baseline))
            naive, _ = await timed(max(3, args.runs // 10), row_by_row)
            print(line("contrast: rows fetched and counted in Python", naive, baseline))
        for gate in a.gates:
            print(f"  {gate.verdict:<12} {gate.name:<22} {gate.reason}")
        budget = statistics.median(assessed)
        print(
            f"budget 500 ms: assess median {budget:.1f} ms ({'met' if budget <= 500 else 'MISSED'})"
        )
        assert m.succeeded + m.failed + m.pending == total == f.pending
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
