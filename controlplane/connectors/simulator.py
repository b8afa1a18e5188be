"""Control plane execution planes: the fleet simulator, the built-in plane the demo runs on.

It stands in for Intune, Jamf or Landscape: it keeps its assignments as ``DeviceInstall`` rows
and plays the devices' side as well. How it decides:

- ``publish`` gives each device a pending install (ring: the intent's, site class: the
  device's); a device already assigned for the intent keeps its row.
- ``advance`` (every tick) resolves pending installs older than their site class's delay
  (``delay_ticks`` times ``simulator_tick_seconds``). An install succeeds when a seeded hash of
  (intent id, device id), read as a number in [0, 1), is below the success rate: the
  intent's ``constraints.simulate_success_rate`` when set, else
  ``settings.simulator_success_rate``. The same intent and device always resolve alike.
- A success writes the package into the device's inventory (``brew`` on macOS, ``winget`` on
  Windows, ``apt`` on Linux; the application's name at the intent's version), moves
  ``inventory_seq`` and ``last_checkin_at`` on and re-evaluates compliance, so drift appears
  and disappears while the demo runs. Mobile platforms report no packages.
- ``remediate`` rollback marks the intent's installs rolled_back; a succeeded one gets the
  version the device had before (or loses the package if it had none), unless the device
  has moved on to another version since.

``controlplane.connectors.worker`` runs it: each tick publishes the current ring of every
active rollout, then calls ``advance``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.compliance import evaluate_device
from controlplane.connectors import (
    Correlation,
    DeviceRef,
    InstallStatus,
    Intent,
    PermanentError,
    PolicyViolationError,
    Published,
    RemediateAction,
    Remediated,
)
from controlplane.events import NewEvent, append_events
from controlplane.models import Device, utcnow
from controlplane.models_release import (
    Application,
    AppVersion,
    DeploymentIntent,
    DeviceInstall,
)
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

SEED: Final = "goodbot-fleet-simulator-1"
"""Mixed into every draw; another seed gives another, equally reproducible, fleet."""
ACTOR: Final = "connector:simulator"
"""Actor of the events the simulator appends."""
PLATFORM_MANAGERS: Final = {"macos": "brew", "windows": "winget", "linux": "apt"}
"""Package manager that carries an application on each platform."""
DELAY_TICKS: Final = {"online": 1.0, "intermittent": 3.0, "air_gapped": 10.0}
"""Ticks a pending install waits before it resolves, per site class (seed 002 §8.1)."""
INSTALL_STATUSES: Final = ("pending", "succeeded", "failed", "rolled_back")
RESOLVING: Final = ("active", "paused", "completed")
"""Intent states whose pending installs still resolve: a paused rollout stops promotion, not
installs already handed to devices, as on a real plane."""
PUBLISH_CHUNK: Final = 500
"""Install rows per publish transaction."""
DEVICE_CHUNK: Final = 20
"""Installs resolved or rolled back per transaction. Each one re-evaluates its device, which
measured 10-35 ms on the demo tenant (SQLite, 150-300 packages a device), and an inventory
report waits for the whole chunk's write lock."""
ADVANCE_LIMIT: Final = 500
"""Installs resolved per tick at most, so a tick ends in seconds and a promotion is published
soon; the rest resolve on later ticks."""

_INSTALLS: Final = cast(Table, DeviceInstall.__table__)
_DEVICES: Final = cast(Table, Device.__table__)


def publish_key(intent_id: str, ring: int) -> str:
    """The idempotency key of publishing an intent to one ring."""
    return f"publish:{intent_id}:{ring}"


def draw(intent_id: str, device_id: str, *, seed: str = SEED) -> float:
    """A reproducible number in [0, 1) for one device's install of one intent."""
    digest = hashlib.sha256(f"{seed}:{intent_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def success_rate(constraints: Mapping[str, Any], default: float) -> float:
    """``constraints.simulate_success_rate`` when it is a number in [0, 1], else ``default``."""
    value = constraints.get("simulate_success_rate")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return default


@dataclass(frozen=True, slots=True)
class Advanced:
    """What one ``advance`` resolved."""

    succeeded: int = 0
    """Installs that succeeded."""
    failed: int = 0
    """Installs that failed."""


@dataclass
class _Inventory:
    """A device's inventory while a chunk changes it (a device may resolve several intents)."""

    tenant_id: str
    platform: str
    rows: list[list[Any]]
    seq: int
    changed: bool = False


@dataclass
class _Chunk:
    """Changes of one transaction, written together at its end."""

    now: datetime
    correlation_id: str
    devices: dict[str, _Inventory] = field(default_factory=dict)
    installs: list[dict[str, Any]] = field(default_factory=list)
    tally: defaultdict[str, defaultdict[str, defaultdict[str, int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    )
    """tenant → intent → status → installs, for the per-chunk summary event."""


class FleetSimulator:
    """The built-in execution plane (a ``Connector``)."""

    name = "simulator"

    def __init__(
        self,
        state: ServiceState,
        *,
        delay_ticks: Mapping[str, float] | None = None,
        seed: str = SEED,
    ) -> None:
        """A simulator over the service's database.

        Args:
            state: The service state (sessions, settings).
            delay_ticks: Ticks before a pending install resolves, per site class; classes not
                named wait as long as ``online``. Defaults to ``DELAY_TICKS``.
            seed: Mixed into every draw.
        """
        self.state = state
        self.delay_ticks = dict(DELAY_TICKS if delay_ticks is None else delay_ticks)
        self.seed = seed

    def delay(self, site_class: str) -> timedelta:
        """How long a pending install of a device of ``site_class`` waits before resolving."""
        ticks = self.delay_ticks.get(site_class, self.delay_ticks.get("online", 1.0))
        return timedelta(seconds=ticks * self.state.settings.simulator_tick_seconds)

    async def publish(self, intent: Intent, devices: Sequence[DeviceRef], *, key: str) -> Published:
        """Give each device a pending install; devices assigned already are skipped."""
        del key  # Rows are keyed by (intent, device), so a repeated call adds nothing.
        await self._check_tenant(intent, devices)
        now = utcnow()
        assigned = 0
        for chunk in _chunks(devices, PUBLISH_CHUNK):
            async with self.state.writing() as session:
                ids = [d.id for d in chunk]
                existing = set(
                    (
                        await session.execute(
                            select(DeviceInstall.device_id).where(
                                DeviceInstall.intent_id == intent.id,
                                DeviceInstall.device_id.in_(ids),
                            )
                        )
                    ).scalars()
                )
                rows = [
                    {
                        "intent_id": intent.id,
                        "device_id": d.id,
                        "tenant_id": intent.tenant_id,
                        "ring": intent.ring,
                        "site_class": d.site_class,
                        "status": "pending",
                        "assigned_at": now,
                    }
                    for d in chunk
                    if d.id not in existing
                ]
                if rows:
                    # DO NOTHING as well: another replica may have assigned the same device.
                    await session.execute(_insert_ignore(session), rows)
            assigned += len(rows)
            await asyncio.sleep(0)
        return Published(
            plane_ref=_assignment_ref(intent.id, intent.ring),
            assigned=assigned,
            already_assigned=len(devices) - assigned,
        )

    async def query(self, intent: Intent, *, key: str) -> InstallStatus:
        """Installs of the intent's current ring, counted by status."""
        del key  # A read.
        async with self.state.sessions() as session:
            rows = await session.execute(
                select(DeviceInstall.status, func.count())
                .where(DeviceInstall.intent_id == intent.id, DeviceInstall.ring == intent.ring)
                .group_by(DeviceInstall.status)
            )
            counts = dict.fromkeys(INSTALL_STATUSES, 0) | {s: int(n) for s, n in rows}
        return InstallStatus(_assignment_ref(intent.id, intent.ring), intent.ring, counts)

    async def remediate(
        self,
        intent: Intent,
        devices: Sequence[DeviceRef] | None,
        action: RemediateAction,
        *,
        key: str,
    ) -> Remediated:
        """Roll back or redeploy the intent's installs on ``devices`` (None: all of them).

        ``redeploy`` makes failed installs pending again; since draws are deterministic they
        resolve alike unless the success rate changed meanwhile.

        Raises:
            PermanentError: for an action the simulator does not know.
        """
        del key  # Both actions move rows between statuses, so repeating them changes nothing.
        if action not in ("rollback", "redeploy"):
            raise PermanentError(f"the simulator cannot {action!r}", plane_code="unsupported")
        if devices is not None:
            await self._check_tenant(intent, devices)
            ids = [d.id for d in devices]
        else:
            async with self.state.sessions() as session:
                ids = list(
                    (
                        await session.execute(
                            select(DeviceInstall.device_id)
                            .where(DeviceInstall.intent_id == intent.id)
                            .order_by(DeviceInstall.device_id)
                        )
                    ).scalars()
                )
        changed = 0
        correlation_id = f"sim-{action}-{uuid.uuid4().hex[:12]}"
        for chunk in _chunks(ids, DEVICE_CHUNK):
            if action == "rollback":
                changed += await self._rollback_chunk(intent, chunk, correlation_id)
            else:
                changed += await self._redeploy_chunk(intent, chunk)
            await asyncio.sleep(0)
        return Remediated(f"sim://remediations/{intent.id}/{action}", action, changed)

    async def correlate(self, intent: Intent, *, key: str) -> Correlation:
        """The simulator's names for the intent's application and ring assignments."""
        del key  # A read.
        async with self.state.sessions() as session:
            rings = (
                await session.execute(
                    select(DeviceInstall.ring)
                    .where(DeviceInstall.intent_id == intent.id)
                    .distinct()
                    .order_by(DeviceInstall.ring)
                )
            ).scalars()
            refs = {f"ring.{r}": _assignment_ref(intent.id, r) for r in rings}
        return Correlation(
            {"application": f"sim://apps/{intent.application}/{intent.version}"} | refs
        )

    async def advance(self, *, now: datetime | None = None, limit: int = ADVANCE_LIMIT) -> Advanced:
        """Resolve due pending installs of every tenant, ``DEVICE_CHUNK`` per transaction.

        Args:
            now: The simulated present; defaults to the current time.
            limit: Most installs to resolve in this call.
        """
        now = now or utcnow()
        correlation_id = f"sim-advance-{uuid.uuid4().hex[:12]}"
        succeeded = failed = 0
        while succeeded + failed < limit:
            size = min(DEVICE_CHUNK, limit - succeeded - failed)
            chunk = await self._advance_chunk(now, correlation_id, size)
            succeeded += chunk.succeeded
            failed += chunk.failed
            if chunk.succeeded + chunk.failed < size:
                break
            # Let requests queued behind this chunk's write lock run before the next one.
            await asyncio.sleep(0)
        return Advanced(succeeded, failed)

    def _due(self, now: datetime) -> ColumnElement[bool]:
        known = list(self.delay_ticks)
        due = [
            and_(
                DeviceInstall.site_class == site,
                DeviceInstall.assigned_at <= now - self.delay(site),
            )
            for site in known
        ]
        other = and_(
            DeviceInstall.site_class.not_in(known),
            DeviceInstall.assigned_at <= now - self.delay("online"),
        )
        return or_(*due, other)

    async def _advance_chunk(self, now: datetime, correlation_id: str, size: int) -> Advanced:
        default_rate = self.state.settings.simulator_success_rate
        async with self.state.writing() as session:
            rows = (
                await session.execute(
                    select(
                        DeviceInstall.intent_id,
                        DeviceInstall.device_id,
                        DeploymentIntent.constraints,
                        Application.name,
                        AppVersion.version,
                    )
                    .join(DeploymentIntent, DeploymentIntent.id == DeviceInstall.intent_id)
                    .join(Application, Application.id == DeploymentIntent.application_id)
                    .join(AppVersion, AppVersion.id == DeploymentIntent.version_id)
                    .where(
                        DeviceInstall.status == "pending",
                        DeploymentIntent.state.in_(RESOLVING),
                        self._due(now),
                    )
                    .order_by(
                        DeviceInstall.assigned_at, DeviceInstall.intent_id, DeviceInstall.device_id
                    )
                    .limit(size)
                    # PostgreSQL: another replica's simulator skips the rows this one resolves.
                    .with_for_update(of=DeviceInstall, skip_locked=True)
                )
            ).all()
            if not rows:
                return Advanced()
            work = _Chunk(now, correlation_id)
            await _load_devices(session, work, [r.device_id for r in rows])
            succeeded = 0
            for intent_id, device_id, constraints, application, version in rows:
                device = work.devices[device_id]
                ok = draw(intent_id, device_id, seed=self.seed) < success_rate(
                    constraints or {}, default_rate
                )
                previous = None
                manager = PLATFORM_MANAGERS.get(device.platform)
                if ok and manager is not None:
                    device.rows, previous = _installed(device.rows, manager, application, version)
                    device.changed = True
                status = "succeeded" if ok else "failed"
                succeeded += ok
                work.installs.append(
                    {
                        "i": intent_id,
                        "d": device_id,
                        "s": status,
                        "r": now,
                        "p": previous,
                    }
                )
                work.tally[device.tenant_id][intent_id][status] += 1
            await session.execute(
                update(_INSTALLS)
                .where(
                    _INSTALLS.c.intent_id == bindparam("i"),
                    _INSTALLS.c.device_id == bindparam("d"),
                )
                .values(
                    status=bindparam("s"),
                    reported_at=bindparam("r"),
                    previous_version=bindparam("p"),
                ),
                work.installs,
            )
            await self._write_devices(session, work, "simulator.install")
        return Advanced(succeeded, len(rows) - succeeded)

    async def _rollback_chunk(self, intent: Intent, ids: Sequence[str], correlation_id: str) -> int:
        manager_for = PLATFORM_MANAGERS.get
        async with self.state.writing() as session:
            rows = (
                await session.execute(
                    select(
                        DeviceInstall.device_id,
                        DeviceInstall.status,
                        DeviceInstall.previous_version,
                    )
                    .where(
                        DeviceInstall.intent_id == intent.id,
                        DeviceInstall.device_id.in_(list(ids)),
                        DeviceInstall.status != "rolled_back",
                    )
                    .with_for_update()
                )
            ).all()
            if not rows:
                return 0
            work = _Chunk(utcnow(), correlation_id)
            await _load_devices(
                session, work, [r.device_id for r in rows if r.status == "succeeded"]
            )
            for device_id, status, previous in rows:
                work.installs.append({"i": intent.id, "d": device_id, "r": work.now})
                work.tally[intent.tenant_id][intent.id]["rolled_back"] += 1
                device = work.devices.get(device_id)
                manager = None if device is None else manager_for(device.platform)
                if status != "succeeded" or device is None or manager is None:
                    continue
                restored = _restored(
                    device.rows, manager, intent.application, intent.version, previous
                )
                if restored is not None:
                    device.rows, device.changed = restored, True
            await session.execute(
                update(_INSTALLS)
                .where(
                    _INSTALLS.c.intent_id == bindparam("i"),
                    _INSTALLS.c.device_id == bindparam("d"),
                )
                .values(status="rolled_back", reported_at=bindparam("r")),
                work.installs,
            )
            await self._write_devices(session, work, "simulator.rollback")
        return len(rows)

    async def _redeploy_chunk(self, intent: Intent, ids: Sequence[str]) -> int:
        async with self.state.writing() as session:
            moved = await session.execute(
                update(_INSTALLS)
                .where(
                    _INSTALLS.c.intent_id == intent.id,
                    _INSTALLS.c.device_id.in_(list(ids)),
                    _INSTALLS.c.status == "failed",
                )
                .values(status="pending", assigned_at=utcnow(), reported_at=None)
                .returning(_INSTALLS.c.device_id)
            )
            return len(moved.all())

    async def _write_devices(self, session: AsyncSession, work: _Chunk, action: str) -> None:
        """Store changed inventories, append their events and re-evaluate those devices."""
        changed = {d: inv for d, inv in work.devices.items() if inv.changed}
        if changed:
            await session.execute(
                update(_DEVICES)
                .where(_DEVICES.c.id == bindparam("d"))
                .values(
                    inventory=bindparam("inv"),
                    inventory_seq=bindparam("seq"),
                    last_checkin_at=work.now,
                    updated_at=work.now,
                ),
                [{"d": d, "inv": inv.rows, "seq": inv.seq + 1} for d, inv in changed.items()],
            )
        events: defaultdict[str, list[NewEvent]] = defaultdict(list)
        for device_id, inv in changed.items():
            events[inv.tenant_id].append(
                NewEvent(
                    type="inventory_reported",
                    action=action,
                    outcome="success",
                    actor=ACTOR,
                    correlation_id=work.correlation_id,
                    device_id=device_id,
                    data={"sequence": inv.seq + 1, "packages": len(inv.rows)},
                    timestamp=work.now,
                )
            )
        for tenant_id, intents in work.tally.items():
            # One summary per tenant and chunk: failures leave no other trace in the chain.
            events[tenant_id].append(
                NewEvent(
                    type="connector_task",
                    action=f"connector.{action.removeprefix('simulator.')}",
                    outcome="success",
                    actor=ACTOR,
                    correlation_id=work.correlation_id,
                    data={
                        "connector": self.name,
                        "installs": {i: dict(by) for i, by in intents.items()},
                    },
                    timestamp=work.now,
                )
            )
        for tenant_id, batch in events.items():
            await append_events(session, tenant_id, batch)
        for device_id, inv in changed.items():
            await evaluate_device(
                session,
                self.state,
                inv.tenant_id,
                device_id,
                actor=ACTOR,
                correlation_id=work.correlation_id,
                now=work.now,
            )

    async def _check_tenant(self, intent: Intent, devices: Sequence[DeviceRef]) -> None:
        # The tenant boundary is a hard control (seed 002 §5.4.1), checked before any write.
        async with self.state.sessions() as session:
            for chunk in _chunks([d.id for d in devices], PUBLISH_CHUNK):
                found = await session.execute(
                    select(func.count()).where(
                        Device.id.in_(chunk), Device.tenant_id == intent.tenant_id
                    )
                )
                if found.scalar_one() != len(set(chunk)):
                    raise PolicyViolationError(
                        "a device outside the intent's tenant was named",
                        plane_code="tenant_boundary",
                    )


async def _load_devices(session: AsyncSession, work: _Chunk, ids: list[str]) -> None:
    if not ids:
        return
    rows = await session.execute(
        select(Device.id, Device.tenant_id, Device.platform, Device.inventory, Device.inventory_seq)
        .where(Device.id.in_(sorted(set(ids))))
        # PostgreSQL: an inventory report committing meanwhile would be overwritten.
        .with_for_update()
    )
    for device_id, tenant_id, platform, inventory, seq in rows:
        work.devices[device_id] = _Inventory(
            tenant_id, platform, [list(r) for r in inventory or []], max(seq, -1)
        )


def _installed(
    rows: list[list[Any]], manager: str, name: str, version: str
) -> tuple[list[list[Any]], str | None]:
    """The inventory with ``name`` at ``version`` and the version it replaced (None: absent)."""
    previous: str | None = None
    pinned = False
    kept = []
    for row in rows:
        if row[0] == manager and row[1] == name:
            previous, pinned = row[2], bool(row[3])
        else:
            kept.append(row)
    # A pin stays as it was: the plane installs, it does not change the device's pinning.
    return sorted([*kept, [manager, name, version, pinned]]), previous


def _restored(
    rows: list[list[Any]], manager: str, name: str, installed: str, previous: str | None
) -> list[list[Any]] | None:
    """The inventory with ``previous`` back, or None when the device no longer has ours."""
    current = next((r for r in rows if r[0] == manager and r[1] == name), None)
    if current is None or current[2] != installed:
        return None
    kept = [r for r in rows if r is not current]
    if previous is not None:
        kept.append([manager, name, previous, current[3]])
    return sorted(kept)


def _assignment_ref(intent_id: str, ring: int) -> str:
    return f"sim://assignments/{intent_id}/ring{ring}"


def _insert_ignore(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(DeviceInstall).on_conflict_do_nothing(index_elements=["intent_id", "device_id"])


def _chunks[T](items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
