"""Benchmark: full compliance recompute of a fleet and one device's evaluation, on SQLite.

Builds a deterministic fleet in a temporary, migrated SQLite database (WAL, as the service
runs it): a scope tree of departments, teams and environments, signed bundles on every level
(about 80 effective rules per device), a 5,000-package catalog and 150-300 installed packages
per device. Then times, in the same run:

- baseline: reading every device row (Core select, inventory JSON decoded) in recompute chunks;
- ``recompute_tenant`` on empty compliance tables, then again replacing every record;
- ``evaluate_device`` for single devices after an inventory change, each in its own write
  transaction, beside the same transaction doing only the inventory update.

    .venv/bin/python bench/drift_recompute.py [--devices 50000] [--single 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from controlplane import db
from controlplane.compliance import evaluate_device
from controlplane.models import (
    ComplianceRecord,
    Device,
    DeviceScope,
    PolicyBundle,
    Scope,
    ScopeCount,
    Tenant,
    Violation,
    utcnow,
)
from controlplane.policy_model import PolicyBundle as BundleDoc
from controlplane.policy_store import load_tenant_policy
from controlplane.ratelimit import RateLimiter
from controlplane.recompute import recompute_tenant
from controlplane.settings import ControlPlaneSettings
from controlplane.signing import Signer, digest
from controlplane.state import ServiceState

TENANT = "ten_bench"
MANAGERS = ("brew", "npm", "pip", "apt", "cargo")
MANAGED = ["brew", "npm", "pip", "apt"]
"""``cargo`` is left out so some devices carry ``unmanaged_toolchain`` drift."""


def machine() -> str:
    """One line naming the machine and the software the figures come from."""
    return (
        f"{platform.platform()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"SQLite {sqlite3.sqlite_version}"
    )


class Fleet:
    """The deterministic dataset."""

    def __init__(self, rng: random.Random, devices: int) -> None:
        self.rng = rng
        weights = (40, 25, 25, 9, 1)
        self.catalog = [
            (rng.choices(MANAGERS, weights)[0], f"pkg-{i:04d}", self._version())
            for i in range(5000)
        ]
        self.scopes: list[dict[str, Any]] = []
        self.leaves: list[str] = []
        root = self._scope(None, "/", "organization", "org")
        for d in range(5):
            dept = self._scope(root, self.scopes[0]["path"], "department", f"dept{d}")
            for t in range(4):
                team = self._scope(dept, self._path(dept), "team", f"team{t}")
                for env in ("prod", "dev"):
                    self.leaves.append(self._scope(team, self._path(team), "environment", env))
        self.root = root
        self.devices = devices

    def _version(self) -> str:
        r = self.rng
        return f"{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 30)}"

    def _path(self, scope_id: str) -> str:
        return next(str(s["path"]) for s in self.scopes if s["id"] == scope_id)

    def _scope(self, parent: str | None, parent_path: str, level: str, name: str) -> str:
        scope_id = f"scp_{len(self.scopes):04d}"
        self.scopes.append(
            {
                "id": scope_id,
                "tenant_id": TENANT,
                "parent_id": parent,
                "level": level,
                "name": name,
                "path": f"{parent_path}{scope_id}/",
                "created_at": utcnow(),
            }
        )
        return scope_id

    def bundles(self) -> list[dict[str, Any]]:
        """Bundles on every level; a device sees about 80 rules once resolved."""
        rng = self.rng
        by_level: dict[str, list[str]] = {}
        for scope in self.scopes:
            by_level.setdefault(scope["level"], []).append(scope["id"])
        docs = []
        governable = [p for p in self.catalog if p[0] in MANAGED]
        sizes = {"organization": 44, "department": 22, "team": 20, "environment": 12}
        for level, scope_ids in by_level.items():
            for scope_id in scope_ids:
                picks = rng.sample(governable, sizes[level])
                n = len(picks)
                required = picks[: n // 3]
                allowed = picks[n // 3 : 2 * n // 3]
                denied = picks[2 * n // 3 : 5 * n // 6]
                pinned = picks[5 * n // 6 :]
                doc: dict[str, Any] = {
                    "policy_id": f"{level}-{scope_id}",
                    "policy_version": 1,
                    "scope_bindings": [scope_id],
                    "required_packages": [
                        self._rule(p, ranged=i % 2 == 0) for i, p in enumerate(required)
                    ],
                    "allowed_packages": [self._rule(p, ranged=True) for p in allowed],
                    "denied_packages": [
                        self._rule(p, ranged=i % 3 == 0) for i, p in enumerate(denied)
                    ],
                    "pin_rules": [
                        {"manager": m, "name": name, "version": v} for m, name, v in pinned
                    ],
                }
                if level == "organization":
                    doc["managed_managers"] = MANAGED
                docs.append(BundleDoc.model_validate(doc).model_dump(mode="json"))
        return docs

    @staticmethod
    def _rule(pkg: tuple[str, str, str], *, ranged: bool) -> dict[str, Any]:
        manager, name, version = pkg
        major = int(version.split(".")[0])
        return {
            "manager": manager,
            "name": name,
            "versions": f">={major}.0,<{major + 1}" if ranged else None,
        }

    def device_rows(
        self, bundles: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Devices with 150-300 packages: most governed ones present, a little drift."""
        rng = self.rng
        path = {s["id"]: s["path"] for s in self.scopes}
        bound: dict[str, list[dict[str, Any]]] = {}
        for doc in bundles:
            bound.setdefault(doc["scope_bindings"][0], []).append(doc)
        # Packages governed on each leaf, with how likely a device carries each of them.
        governed: dict[str, list[tuple[float, str, str]]] = {}
        for leaf in self.leaves:
            chain = [b for s in path[leaf].strip("/").split("/") for b in bound.get(s, [])]
            governed[leaf] = [
                (share, r["manager"], r["name"])
                for b in chain
                for key, share in (
                    ("required_packages", 0.99),
                    ("allowed_packages", 0.5),
                    ("pin_rules", 0.9),
                    ("denied_packages", 0.01),
                )
                for r in b[key]
            ]
        versions = {(m, n): v for m, n, v in self.catalog}
        denied = {(r["manager"], r["name"]) for b in bundles for r in b["denied_packages"]}
        now = utcnow()
        devices, members = [], []
        for i in range(self.devices):
            device_id = f"dev_{i:08d}"
            leaf = rng.choice(self.leaves)
            installed: dict[tuple[str, str], list[Any]] = {}
            for share, m, n in governed[leaf]:
                if rng.random() < share:
                    v = versions[m, n] if rng.random() > 0.02 else self._version()
                    installed[m, n] = [m, n, v, rng.random() < 0.97]
            target = rng.randint(150, 300)
            while len(installed) < target:
                m, n, v = rng.choice(self.catalog)
                if (m, n) in denied or (m == "cargo" and rng.random() < 0.95):
                    continue
                installed.setdefault((m, n), [m, n, v, False])
            rows = sorted(installed.values())
            devices.append(
                {
                    "id": device_id,
                    "tenant_id": TENANT,
                    "name": f"host-{i:06d}",
                    "platform": rng.choice(("macos", "windows", "linux")),
                    "site_class": "online",
                    "managed_mode": "unmanaged" if i % 20 == 0 else "managed-enforced",
                    "ring": i % 5,
                    "last_checkin_at": now - timedelta(hours=rng.randint(0, 180)),
                    "inventory_seq": 1,
                    "inventory": rows,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            members.append({"device_id": device_id, "scope_id": leaf, "tenant_id": TENANT})
        return devices, members


async def build(state: ServiceState, fleet: Fleet) -> None:
    bundles = fleet.bundles()
    devices, members = fleet.device_rows(bundles)
    async with state.writing() as session:
        session.add(Tenant(id=TENANT, name="bench", policy_revision=1))
        await session.flush()
        await session.execute(insert(Scope), fleet.scopes)
        await session.execute(
            insert(PolicyBundle),
            [
                {
                    "id": f"pb_{i:05d}",
                    "tenant_id": TENANT,
                    "policy_id": doc["policy_id"],
                    "policy_version": doc["policy_version"],
                    "content": doc,
                    "digest": digest(doc),
                    "key_id": state.signer.key_id,
                    "signature": state.signer.sign(doc),
                    "created_by": "bench",
                    "created_at": utcnow(),
                }
                for i, doc in enumerate(bundles)
            ],
        )
    for start in range(0, len(devices), 2000):
        async with state.writing() as session:
            await session.execute(insert(Device), devices[start : start + 2000])
            await session.execute(insert(DeviceScope), members[start : start + 2000])


async def read_all(state: ServiceState) -> int:
    """The baseline: every device row as recompute reads it, nothing evaluated or written.

    The garbage collector is paused as recompute pauses it, so the two compare like for like.
    """
    gc.disable()
    try:
        return await _read_all(state)
    finally:
        gc.enable()


async def _read_all(state: ServiceState) -> int:
    async with state.sessions() as session:
        ids = list(
            (
                await session.execute(
                    select(Device.id).where(Device.tenant_id == TENANT).order_by(Device.id)
                )
            ).scalars()
        )
    n = 0
    for start in range(0, len(ids), 1000):
        async with state.sessions() as session:
            rows = (
                await session.execute(
                    select(
                        Device.id,
                        Device.managed_mode,
                        Device.last_checkin_at,
                        Device.inventory_seq,
                        Device.inventory,
                    ).where(Device.id.in_(ids[start : start + 1000]))
                )
            ).all()
        n += len(rows)
    return n


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


async def single(state: ServiceState, count: int, rng: random.Random) -> tuple[list[float], ...]:
    """Per device: the inventory update alone, then the update plus ``evaluate_device``."""
    async with state.sessions() as session:
        ids = list((await session.execute(select(Device.id).order_by(Device.id))).scalars())
    picked = rng.sample(ids, count)
    bare: list[float] = []
    full: list[float] = []
    call: list[float] = []
    for n, device_id in enumerate(picked):
        async with state.sessions() as session:
            inventory = (
                await session.execute(select(Device.inventory).where(Device.id == device_id))
            ).scalar_one()
        inventory = [list(r) for r in inventory]
        inventory[n % len(inventory)][2] = "0.0.1"
        for with_eval in (False, True):
            start = time.perf_counter()
            async with state.writing() as session:
                await session.execute(
                    update(Device)
                    .where(Device.id == device_id)
                    .values(
                        inventory=inventory,
                        inventory_seq=Device.inventory_seq + 1,
                        last_checkin_at=utcnow(),
                    )
                )
                if with_eval:
                    t0 = time.perf_counter()
                    await evaluate_device(
                        session,
                        state,
                        TENANT,
                        device_id,
                        actor="bench",
                        correlation_id=f"bench-{n}",
                    )
                    call.append((time.perf_counter() - t0) * 1000)
            (full if with_eval else bare).append((time.perf_counter() - start) * 1000)
    return bare, full, call


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        settings = ControlPlaneSettings(data_dir=Path(tmp))
        engine = db.create_engine(settings.resolved_database_url())
        await db.migrate(engine)
        state = ServiceState(
            settings=settings,
            engine=engine,
            sessions=db.session_factory(engine),
            signer=Signer.load_or_create(Path(tmp) / "key.pem"),
            limiter=RateLimiter(1e9, 10**9),
        )
        start = time.perf_counter()
        fleet = Fleet(rng, args.devices)
        await build(state, fleet)
        built = time.perf_counter() - start
        async with state.sessions() as session:
            policy = await load_tenant_policy(session, state, TENANT)
            packages = (
                await session.execute(select(func.sum(func.json_array_length(Device.inventory))))
            ).scalar_one()
        rules = [len(e.rules) for leaf in fleet.leaves if (e := policy.effective([leaf]))]
        size = await asyncio.to_thread(os.path.getsize, settings.data_dir / "controlplane.db")
        print(machine())
        print(
            f"fleet: {args.devices} devices, {packages / args.devices:.0f} packages each "
            f"(150-300), catalog 5000, {len(policy.bundles)} bundles, "
            f"{min(rules)}-{max(rules)} effective rules per device, {len(fleet.scopes)} scopes, "
            f"database {size / 2**20:.0f} MiB (built in {built:.1f} s)"
        )

        start = time.perf_counter()
        read = await read_all(state)
        baseline = time.perf_counter() - start
        print(f"baseline  read all device rows (chunks of 1000)      {baseline:7.2f} s  ({read})")
        for label in ("recompute into empty tables", "recompute replacing every record"):
            start = time.perf_counter()
            result = await recompute_tenant(state, TENANT)
            total = time.perf_counter() - start
            print(
                f"{label:<50} {total:7.2f} s  = evaluate+write "
                f"{result.evaluate_seconds:.2f} s + scope counts {result.rebuild_seconds:.2f} s"
                f"  ({total / baseline:.1f}x baseline)"
            )
        print(f"  states {result.by_state}")
        print(f"  devices per category {result.by_category}; {result.violations} violations")
        async with state.sessions() as session:
            counted = (
                await session.execute(select(func.count()).select_from(ScopeCount))
            ).scalar_one()
            stored = (
                await session.execute(select(func.count()).select_from(ComplianceRecord))
            ).scalar_one()
            rows = (await session.execute(select(func.count()).select_from(Violation))).scalar_one()
        print(f"  stored: {stored} records, {rows} violation rows, {counted} scope count rows")

        bare, full, call = await single(state, args.single, rng)
        print(f"single device after an inventory change ({args.single} devices, own transaction):")
        for label, values in (
            ("baseline  inventory update only", bare),
            ("inventory update + evaluate_device", full),
            ("evaluate_device call alone", call),
        ):
            print(
                f"  {label:<38} p50 {pct(values, 0.5):6.2f} ms   p99 {pct(values, 0.99):6.2f} ms"
                f"   mean {statistics.fmean(values):6.2f} ms"
            )
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
