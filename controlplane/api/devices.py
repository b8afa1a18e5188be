"""Control plane API: device registration, memberships and inventory reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, require, within
from controlplane.api.tenancy import scope_in_tenant
from controlplane.compliance import evaluate_device, record_json, withdraw_device
from controlplane.errors import ApiError, ConflictError, NotFoundError, UnprocessableError
from controlplane.events import append_event
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, paginate
from controlplane.models import ComplianceRecord, Device, DeviceScope, Scope, new_id, utcnow
from controlplane.policy_model import Manager, PackageName

api = Api()

Platform = Literal["macos", "windows", "linux", "ios", "android"]
SiteClass = Literal["online", "intermittent", "air_gapped"]
ManagedMode = Literal["unmanaged", "managed-readonly", "managed-enforced"]
ScopeIds = Field(min_length=1, max_length=20)


class DeviceCreate(Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Host name, unique in the tenant."""
    platform: Platform
    site_class: SiteClass = "online"
    """Connectivity class, which sets the time-to-compliance expectation."""
    managed_mode: ManagedMode = "managed-readonly"
    ring: int = Field(default=4, ge=0, le=4)
    """Rollout ring: 0 lab, 1 canary, 2 pilot, 3 department, 4 global."""
    scope_ids: list[str] = ScopeIds
    """Scopes the device is a member of (a team, an environment, device groups…)."""


class DeviceUpdate(Strict):
    site_class: SiteClass | None = None
    managed_mode: ManagedMode | None = None
    ring: int | None = Field(default=None, ge=0, le=4)
    scope_ids: list[str] | None = Field(default=None, min_length=1, max_length=20)


class DeviceOut(BaseModel):
    id: str
    name: str
    platform: str
    site_class: str
    managed_mode: str
    ring: int
    scope_ids: list[str]
    last_checkin_at: datetime | None
    inventory_seq: int
    created_at: datetime
    updated_at: datetime


class DeviceList(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None


class Package(Strict):
    manager: Manager
    name: PackageName
    version: str = Field(min_length=1, max_length=100)
    pinned: bool = False


class InventoryReport(Strict):
    sequence: int = Field(ge=0, le=2**62)
    """Monotonic per device; a repeated sequence is a replay and changes nothing."""
    packages: list[Package] = Field(max_length=20_000)
    """Every installed package: the report replaces the previous inventory."""


class InventoryAccepted(BaseModel):
    device_id: str
    sequence: int
    accepted: bool
    """False when this sequence was already applied (a replay); nothing changed."""
    compliance: dict[str, Any] | None


class InventoryOut(BaseModel):
    device_id: str
    sequence: int
    packages: list[Package]


class DeviceQuery(Page):
    scope_id: str | None = Field(default=None, max_length=40)
    """Only devices in this scope's subtree."""
    name: str | None = Field(default=None, min_length=1, max_length=200)
    """Only the device with this name, compared case-insensitively."""


def device_out(device: Device, scope_ids: list[str]) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        name=device.name,
        platform=device.platform,
        site_class=device.site_class,
        managed_mode=device.managed_mode,
        ring=device.ring,
        scope_ids=scope_ids,
        last_checkin_at=device.last_checkin_at,
        inventory_seq=device.inventory_seq,
        created_at=device.created_at,
        updated_at=device.updated_at,
    )


async def device_for(
    session: AsyncSession, caller: Caller, device_id: str
) -> tuple[Device, list[str]]:
    """A device of the caller's tenant within the caller's subtree, with its scope ids."""
    device = await session.get(Device, device_id)
    if device is None or device.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no device {device_id!r}", field="device_id")
    rows = (
        await session.execute(
            select(Scope.id, Scope.path)
            .join(DeviceScope, DeviceScope.scope_id == Scope.id)
            .where(DeviceScope.device_id == device.id)
            .order_by(Scope.id)
        )
    ).all()
    if not any(within(caller, path).allowed for _, path in rows):
        require(within(caller, rows[0][1] if rows else "/"))
    return device, [scope_id for scope_id, _ in rows]


async def _check_scopes(session: AsyncSession, caller: Caller, scope_ids: list[str]) -> None:
    if len(set(scope_ids)) != len(scope_ids):
        raise UnprocessableError("scope_ids repeats a scope", field="scope_ids")
    for scope_id in scope_ids:
        scope = await scope_in_tenant(session, caller, scope_id)
        if scope.level == "organization":
            raise UnprocessableError(
                "a device joins scopes below the organization", field="scope_ids"
            )


@api.route(
    "POST",
    "/devices",
    summary="Register a device",
    permission="device.write",
    tag="devices",
    body=DeviceCreate,
    response=DeviceOut,
    status=201,
)
async def register_device(req: ApiRequest) -> DeviceOut:
    body = req.body
    assert isinstance(body, DeviceCreate)
    me = req.me
    async with req.state.writing() as session:
        await _check_scopes(session, me, body.scope_ids)
        taken = await session.execute(
            select(Device.id).where(Device.tenant_id == me.tenant_id, Device.name == body.name)
        )
        if taken.first() is not None:
            raise ConflictError(f"a device named {body.name!r} is registered", field="name")
        device = Device(
            id=new_id("dev"),
            tenant_id=me.tenant_id,
            name=body.name,
            platform=body.platform,
            site_class=body.site_class,
            managed_mode=body.managed_mode,
            ring=body.ring,
            inventory=[],
            inventory_seq=-1,
        )
        session.add(device)
        await session.flush()
        session.add_all(
            DeviceScope(device_id=device.id, scope_id=s, tenant_id=me.tenant_id)
            for s in body.scope_ids
        )
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="device_registered",
            action="device.register",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            device_id=device.id,
            scope_id=body.scope_ids[0],
            data={"name": body.name, "managed_mode": body.managed_mode},
        )
        # Counted at once (as unknown: it has not reported), not only after a recompute.
        await evaluate_device(
            session,
            req.state,
            me.tenant_id,
            device.id,
            actor=me.actor,
            correlation_id=req.correlation_id,
        )
    return device_out(device, sorted(body.scope_ids))


@api.route(
    "GET",
    "/devices",
    summary="List devices",
    permission="device.read",
    tag="devices",
    query=DeviceQuery,
    response=DeviceList,
)
async def list_devices(req: ApiRequest) -> DeviceList:
    q = req.query
    assert isinstance(q, DeviceQuery)
    me = req.me
    after = decode_cursor(q.cursor)
    async with req.state.sessions() as session:
        root_path = me.scope_path
        if q.scope_id is not None:
            root_path = (await scope_in_tenant(session, me, q.scope_id)).path
        inside = (
            select(DeviceScope.device_id)
            .join(Scope, Scope.id == DeviceScope.scope_id)
            .where(
                DeviceScope.tenant_id == me.tenant_id,
                Scope.path.startswith(root_path, autoescape=True),
            )
        )
        stmt = select(Device).where(Device.tenant_id == me.tenant_id, Device.id.in_(inside))
        if q.name is not None:
            # Names are ASCII (DeviceCreate's pattern), where SQLite's lower() agrees with
            # PostgreSQL's.
            stmt = stmt.where(func.lower(Device.name) == q.name.lower())
        if after is not None:
            stmt = stmt.where(Device.id > after)
        rows = (await session.execute(stmt.order_by(Device.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda d: d.id)
        memberships: dict[str, list[str]] = {d.id: [] for d in page}
        for device_id, scope_id in await session.execute(
            select(DeviceScope.device_id, DeviceScope.scope_id).where(
                DeviceScope.device_id.in_(list(memberships))
            )
        ):
            memberships[device_id].append(scope_id)
    return DeviceList(
        items=[device_out(d, sorted(memberships[d.id])) for d in page], next_cursor=cursor
    )


@api.route(
    "GET",
    "/devices/{device_id}",
    summary="One device",
    permission="device.read",
    tag="devices",
    response=DeviceOut,
)
async def get_device(req: ApiRequest) -> DeviceOut:
    async with req.state.sessions() as session:
        device, scopes = await device_for(session, req.me, req.path("device_id"))
    return device_out(device, scopes)


@api.route(
    "PATCH",
    "/devices/{device_id}",
    summary="Change mode, ring, site class or scopes",
    permission="device.write",
    tag="devices",
    body=DeviceUpdate,
    response=DeviceOut,
)
async def update_device(req: ApiRequest) -> DeviceOut:
    body = req.body
    assert isinstance(body, DeviceUpdate)
    me = req.me
    async with req.state.writing() as session:
        device, scopes = await device_for(session, me, req.path("device_id"))
        changes = body.model_dump(exclude_none=True)
        if body.scope_ids is not None:
            await _check_scopes(session, me, body.scope_ids)
            # Out of the old scopes' counts first; evaluate_device below counts it in the new.
            await withdraw_device(session, req.state, me.tenant_id, device.id)
            await session.execute(delete(DeviceScope).where(DeviceScope.device_id == device.id))
            session.add_all(
                DeviceScope(device_id=device.id, scope_id=s, tenant_id=me.tenant_id)
                for s in body.scope_ids
            )
            scopes = sorted(body.scope_ids)
        for key in ("site_class", "managed_mode", "ring"):
            if key in changes:
                setattr(device, key, changes[key])
        device.updated_at = utcnow()
        await session.flush()
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="device_registered",
            action="device.update",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            device_id=device.id,
            data={"changes": sorted(changes)},
        )
        if body.scope_ids is not None:
            # A new membership changes the device's effective policy: re-evaluate now.
            await evaluate_device(
                session,
                req.state,
                me.tenant_id,
                device.id,
                actor=me.actor,
                correlation_id=req.correlation_id,
            )
    return device_out(device, scopes)


def _rows(packages: list[Package]) -> list[list[Any]]:
    return sorted([p.manager, p.name, p.version, p.pinned] for p in packages)


@api.route(
    "POST",
    "/devices/{device_id}/inventory",
    summary="Report the installed packages",
    permission="inventory.report",
    tag="devices",
    body=InventoryReport,
    response=InventoryAccepted,
)
async def report_inventory(req: ApiRequest) -> InventoryAccepted:
    body = req.body
    assert isinstance(body, InventoryReport)
    me = req.me
    rows = _checked_rows(body.packages, "packages")
    async with req.state.writing() as session:
        device, _ = await device_for(session, me, req.path("device_id"))
        return await _apply(session, req, device, body.sequence, rows)


def _checked_rows(packages: list[Package], field: str) -> list[list[Any]]:
    rows = _rows(packages)
    if len({(r[0], r[1]) for r in rows}) != len(rows):
        raise UnprocessableError("a package is listed twice for the same manager", field=field)
    return rows


async def _apply(
    session: AsyncSession, req: ApiRequest, device: Device, sequence: int, rows: list[list[Any]]
) -> InventoryAccepted:
    """Apply one report to a device inside the caller's transaction (idempotent by sequence)."""
    me = req.me
    if sequence < device.inventory_seq:
        raise ConflictError(
            f"sequence {sequence} is older than the applied {device.inventory_seq}",
            field="sequence",
            details={"applied_sequence": device.inventory_seq},
        )
    if sequence == device.inventory_seq:
        if device.inventory != rows:
            raise ConflictError(
                f"sequence {sequence} was already applied with other content", field="sequence"
            )
        record = await session.get(ComplianceRecord, device.id)
        return InventoryAccepted(
            device_id=device.id,
            sequence=sequence,
            accepted=False,
            compliance=None if record is None else record_json(record),
        )
    device.inventory = rows
    device.inventory_seq = sequence
    device.last_checkin_at = device.updated_at = utcnow()
    await session.flush()
    await append_event(
        session,
        tenant_id=me.tenant_id,
        type="inventory_reported",
        action="inventory.report",
        outcome="success",
        actor=me.actor,
        correlation_id=req.correlation_id,
        device_id=device.id,
        data={"sequence": sequence, "packages": len(rows)},
    )
    compliance = await evaluate_device(
        session,
        req.state,
        me.tenant_id,
        device.id,
        actor=me.actor,
        correlation_id=req.correlation_id,
    )
    return InventoryAccepted(
        device_id=device.id, sequence=sequence, accepted=True, compliance=compliance
    )


class BatchItem(Strict):
    device_id: str = Field(min_length=1, max_length=40)
    sequence: int = Field(ge=0, le=2**62)
    packages: list[Package] = Field(max_length=20_000)


class BatchReport(Strict):
    reports: list[BatchItem] = Field(min_length=1, max_length=500)
    """One report per device; a device may appear once."""


class BatchResult(BaseModel):
    device_id: str
    status: Literal["accepted", "replay", "refused"]
    """``replay``: this sequence was applied before and nothing changed."""
    state: str | None = None
    """The device's compliance state after the report."""
    error: dict[str, Any] | None = None
    """Why a report was refused (the same shape as a single report's error)."""


class BatchOut(BaseModel):
    results: list[BatchResult]


@api.route(
    "POST",
    "/inventory/reports",
    summary="Report the inventories of many devices (a collector or an execution plane)",
    permission="inventory.report",
    tag="devices",
    body=BatchReport,
    response=BatchOut,
)
async def report_inventories(req: ApiRequest) -> BatchOut:
    body = req.body
    assert isinstance(body, BatchReport)
    ids = [item.device_id for item in body.reports]
    if len(set(ids)) != len(ids):
        raise UnprocessableError("a device appears twice in one batch", field="reports")
    results: list[BatchResult] = []
    # Each report is its own transaction: one bad report (stale, unknown device, outside the
    # caller's subtree) is refused on its own and never undoes the others.
    for n, item in enumerate(body.reports):
        try:
            rows = _checked_rows(item.packages, f"reports.{n}.packages")
            async with req.state.writing() as session:
                device, _ = await device_for(session, req.me, item.device_id)
                done = await _apply(session, req, device, item.sequence, rows)
        except ApiError as exc:
            results.append(
                BatchResult(
                    device_id=item.device_id,
                    status="refused",
                    error={"code": exc.code, "message": exc.message, "status": exc.status},
                )
            )
            continue
        state = None if done.compliance is None else done.compliance.get("state")
        results.append(
            BatchResult(
                device_id=item.device_id,
                status="accepted" if done.accepted else "replay",
                state=state,
            )
        )
    return BatchOut(results=results)


@api.route(
    "GET",
    "/devices/{device_id}/inventory",
    summary="The last reported inventory",
    permission="device.read",
    tag="devices",
    response=InventoryOut,
)
async def get_inventory(req: ApiRequest) -> InventoryOut:
    async with req.state.sessions() as session:
        device, _ = await device_for(session, req.me, req.path("device_id"))
    if device.inventory_seq < 0:
        raise NotFoundError("this device has not reported an inventory yet")
    return InventoryOut(
        device_id=device.id,
        sequence=device.inventory_seq,
        packages=[
            Package(manager=m, name=n, version=v, pinned=p) for m, n, v, p in device.inventory
        ],
    )
