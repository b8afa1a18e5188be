"""Control plane API: compliance records, scope summaries, drift by package, recompute jobs.

Every read is confined to the caller's tenant and scope subtree: a device is visible when one
of its memberships lies in the subtree, a scope when it does. Scope summaries are read from
the ``ScopeCount`` pre-aggregates, never counted on request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, require, within
from controlplane.api.devices import device_for
from controlplane.api.tenancy import scope_in_tenant
from controlplane.compliance import record_json
from controlplane.drift import CATEGORIES, STATES
from controlplane.errors import NotFoundError
from controlplane.http import Api, ApiRequest, Page, decode_cursor, paginate
from controlplane.models import ComplianceRecord, Device, DeviceScope, Job, Scope, ScopeCount
from controlplane.models import Violation as ViolationRow
from controlplane.policy_model import Manager, PackageName
from controlplane.recompute import schedule_recompute

api = Api()

State = Literal["compliant", "warning", "non_compliant", "unknown"]
Category = Literal[
    "missing_required",
    "present_denied",
    "version_out_of_range",
    "pin_mismatch",
    "unmanaged_toolchain",
]
assert set(State.__args__) == set(STATES)  # type: ignore[attr-defined]
assert set(Category.__args__) == set(CATEGORIES)  # type: ignore[attr-defined]


class OriginOut(BaseModel):
    scope_id: str
    """Scope the deciding bundle is bound to."""
    level: str
    """That scope's level."""
    policy_id: str
    """Deciding bundle."""
    policy_version: int
    """Its version."""


class ViolationOut(BaseModel):
    category: Category
    """Drift category."""
    manager: str
    """Package manager."""
    package: str
    """Package name; ``*`` for an unmanaged toolchain (the whole manager)."""
    action: Literal["install", "uninstall", "upgrade", "pin", "unpin"]
    """Remediation action that would resolve the finding."""
    expected: str
    """What the policy asks for."""
    actual: str
    """What the device has."""
    origin: OriginOut | None
    """The rule's scope, bundle and version."""


class ComplianceOut(BaseModel):
    device_id: str
    state: State
    policy_version: str | None
    """Bundles evaluated, ``policy_id@version`` joined by commas; None without a policy."""
    evaluated_at: datetime | None
    """None when the device was never evaluated."""
    reason: str
    """Why the device is in this state."""
    violations: list[ViolationOut]


class ScopeComplianceOut(BaseModel):
    scope_id: str
    devices: int
    """Devices with a compliance record in the scope's subtree."""
    states: dict[str, int]
    """Devices per compliance state (every state present, zeros included)."""
    categories: dict[str, int]
    """Devices with at least one finding per drift category (every category present)."""
    updated_at: datetime | None
    """When the counts last changed; None when no device was ever evaluated here."""


class ComplianceQuery(Page):
    scope_id: str | None = Field(default=None, max_length=40)
    """Only devices in this scope's subtree (default: the caller's subtree)."""
    state: State | None = None
    """Only devices in this state."""
    category: Category | None = None
    """Only devices with a finding of this category."""


class DeviceComplianceItem(BaseModel):
    device_id: str
    name: str
    state: State
    policy_version: str | None
    evaluated_at: datetime
    reason: str
    categories: list[str]
    """Distinct categories of the device's findings, most severe first."""
    violations: int
    """Number of findings."""


class DeviceComplianceList(BaseModel):
    items: list[DeviceComplianceItem]
    next_cursor: str | None


class PackageQuery(Page):
    category: Category | None = None
    """Only findings of this category."""


class PackageDevice(BaseModel):
    device_id: str
    name: str
    state: State
    violations: list[ViolationOut]
    """The device's findings about this package."""


class PackageComplianceOut(BaseModel):
    manager: str
    name: str
    counts: dict[str, int]
    """Devices with a finding about this package, per category (every category present)."""
    items: list[PackageDevice]
    next_cursor: str | None


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["pending", "running", "done", "failed"]
    result: dict[str, Any]
    """Counts and timings when done; tenant-wide figures only for organization-wide callers."""
    created_at: datetime
    finished_at: datetime | None


def _visible_devices(caller: Caller, root_path: str) -> Select[str]:
    """Ids of the tenant's devices with a membership under ``root_path``."""
    return (
        select(DeviceScope.device_id)
        .join(Scope, Scope.id == DeviceScope.scope_id)
        .where(
            DeviceScope.tenant_id == caller.tenant_id,
            Scope.path.startswith(root_path, autoescape=True),
        )
    )


async def _root_path(session: AsyncSession, caller: Caller, scope_id: str | None) -> str:
    if scope_id is None:
        return caller.scope_path
    return (await scope_in_tenant(session, caller, scope_id)).path


def _is_organization_wide(caller: Caller) -> bool:
    return caller.scope_path.strip("/").count("/") == 0


@api.route(
    "GET",
    "/devices/{device_id}/compliance",
    summary="A device's compliance record",
    permission="compliance.read",
    tag="compliance",
    response=ComplianceOut,
)
async def device_compliance(req: ApiRequest) -> ComplianceOut:
    me, device_id = req.me, req.path("device_id")
    # One statement for the common case: the record with the paths of the device's scopes,
    # checked against the caller's subtree here (the read the gateway makes most often).
    async with req.state.sessions() as session:
        rows = (
            await session.execute(
                select(ComplianceRecord, Scope.path)
                .join(DeviceScope, DeviceScope.device_id == ComplianceRecord.device_id)
                .join(Scope, Scope.id == DeviceScope.scope_id)
                .where(
                    ComplianceRecord.device_id == device_id,
                    ComplianceRecord.tenant_id == me.tenant_id,
                )
            )
        ).all()
        if not rows:  # unknown device, another tenant's, or not evaluated yet
            device, _ = await device_for(session, me, device_id)
            return ComplianceOut(
                device_id=device.id,
                state="unknown",
                policy_version=None,
                evaluated_at=None,
                reason="the device has not been evaluated yet",
                violations=[],
            )
    paths = [path for _, path in rows]
    if not any(within(me, path).allowed for path in paths):
        require(within(me, paths[0]))
    return ComplianceOut.model_validate(record_json(rows[0][0]))


@api.route(
    "GET",
    "/scopes/{scope_id}/compliance",
    summary="Compliance counts of a scope's subtree",
    permission="compliance.read",
    tag="compliance",
    response=ScopeComplianceOut,
)
async def scope_compliance(req: ApiRequest) -> ScopeComplianceOut:
    async with req.state.sessions() as session:
        scope = await scope_in_tenant(session, req.me, req.path("scope_id"))
        rows = (
            await session.execute(
                select(
                    ScopeCount.kind, ScopeCount.key, ScopeCount.count, ScopeCount.updated_at
                ).where(ScopeCount.scope_id == scope.id)
            )
        ).all()
    states = dict.fromkeys(STATES, 0)
    categories = dict.fromkeys(CATEGORIES, 0)
    for kind, key, count, _ in rows:
        (states if kind == "state" else categories)[key] = count
    updated = max((row[3] for row in rows), default=None)
    return ScopeComplianceOut(
        scope_id=scope.id,
        devices=sum(states.values()),
        states=states,
        categories=categories,
        updated_at=updated,
    )


@api.route(
    "GET",
    "/compliance/devices",
    summary="Devices by compliance state or drift category",
    permission="compliance.read",
    tag="compliance",
    query=ComplianceQuery,
    response=DeviceComplianceList,
)
async def list_device_compliance(req: ApiRequest) -> DeviceComplianceList:
    q = req.query
    assert isinstance(q, ComplianceQuery)
    me = req.me
    after = decode_cursor(q.cursor)
    async with req.state.sessions() as session:
        root_path = await _root_path(session, me, q.scope_id)
        stmt = (
            select(
                ComplianceRecord.device_id,
                Device.name,
                ComplianceRecord.state,
                ComplianceRecord.policy_version,
                ComplianceRecord.evaluated_at,
                ComplianceRecord.reason,
            )
            .join(Device, Device.id == ComplianceRecord.device_id)
            .where(
                ComplianceRecord.tenant_id == me.tenant_id,
                ComplianceRecord.device_id.in_(_visible_devices(me, root_path)),
            )
        )
        if q.state is not None:
            stmt = stmt.where(ComplianceRecord.state == q.state)
        if q.category is not None:
            stmt = stmt.where(
                ComplianceRecord.device_id.in_(
                    select(ViolationRow.device_id).where(
                        ViolationRow.tenant_id == me.tenant_id, ViolationRow.category == q.category
                    )
                )
            )
        if after is not None:
            stmt = stmt.where(ComplianceRecord.device_id > after)
        rows = await session.execute(stmt.order_by(ComplianceRecord.device_id).limit(q.limit + 1))
        page, cursor = paginate(rows, q.limit, lambda r: r[0])
        found: dict[str, list[str]] = {row[0]: [] for row in page}
        if found:
            for device_id, category in await session.execute(
                select(ViolationRow.device_id, ViolationRow.category).where(
                    ViolationRow.device_id.in_(list(found))
                )
            ):
                found[device_id].append(category)
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    return DeviceComplianceList(
        items=[
            DeviceComplianceItem(
                device_id=device_id,
                name=name,
                state=state,
                policy_version=version or None,
                evaluated_at=evaluated_at,
                reason=reason,
                categories=sorted(set(found[device_id]), key=rank.__getitem__),
                violations=len(found[device_id]),
            )
            for device_id, name, state, version, evaluated_at, reason in page
        ],
        next_cursor=cursor,
    )


@api.route(
    "GET",
    "/compliance/packages/{manager}/{name}",
    summary="Findings about one package across devices (encode a / in the name as %2F)",
    permission="compliance.read",
    tag="compliance",
    query=PackageQuery,
    response=PackageComplianceOut,
)
async def package_compliance(req: ApiRequest) -> PackageComplianceOut:
    q = req.query
    assert isinstance(q, PackageQuery)
    me = req.me
    manager = _valid(Manager, req.path("manager"), "manager")
    name = _valid(PackageName, req.path("name"), "name")
    after = decode_cursor(q.cursor)
    base = [
        ViolationRow.tenant_id == me.tenant_id,
        ViolationRow.manager == manager,
        ViolationRow.package == name,
        ViolationRow.device_id.in_(_visible_devices(me, me.scope_path)),
    ]
    async with req.state.sessions() as session:
        counted = await session.execute(
            select(ViolationRow.category, func.count(ViolationRow.device_id.distinct()))
            .where(*base)
            .group_by(ViolationRow.category)
        )
        counts = dict.fromkeys(CATEGORIES, 0)
        # Result has keys(), so dict(result) would take it for a mapping.
        counts.update({category: n for category, n in counted})
        page_stmt = select(ViolationRow.device_id).where(*base).distinct()
        if q.category is not None:
            page_stmt = page_stmt.where(ViolationRow.category == q.category)
        if after is not None:
            page_stmt = page_stmt.where(ViolationRow.device_id > after)
        ids = (
            await session.execute(page_stmt.order_by(ViolationRow.device_id).limit(q.limit + 1))
        ).scalars()
        page, cursor = paginate(ids, q.limit, lambda d: d)
        records = (
            (
                await session.execute(
                    select(
                        ComplianceRecord.device_id,
                        Device.name,
                        ComplianceRecord.state,
                        ComplianceRecord.violations,
                    )
                    .join(Device, Device.id == ComplianceRecord.device_id)
                    .where(ComplianceRecord.device_id.in_(page))
                    .order_by(ComplianceRecord.device_id)
                )
            ).all()
            if page
            else []
        )
    items = []
    for device_id, device_name, state, violations in records:
        mine = [
            ViolationOut.model_validate(v)
            for v in violations
            if v["manager"] == manager
            and v["package"] == name
            and (q.category is None or v["category"] == q.category)
        ]
        items.append(
            PackageDevice(device_id=device_id, name=device_name, state=state, violations=mine)
        )
    return PackageComplianceOut(
        manager=manager, name=name, counts=counts, items=items, next_cursor=cursor
    )


def _valid(kind: Any, value: str, where: str) -> str:
    """Validate a path parameter with a ``policy_model`` annotated type; unknown is a 404."""
    try:
        return str(TypeAdapter(kind).validate_python(value))
    except ValidationError:
        raise NotFoundError(f"no such {where} {value!r}", field=where) from None


@api.route(
    "POST",
    "/compliance/recompute",
    summary="Re-evaluate every device of the tenant",
    permission="compliance.recompute",
    tag="compliance",
    response=JobAccepted,
    status=202,
)
async def recompute(req: ApiRequest) -> JobAccepted:
    me = req.me
    async with req.state.writing() as session:
        job_id = await schedule_recompute(
            session,
            req.state,
            me.tenant_id,
            reason="requested",
            actor=me.actor,
            correlation_id=req.correlation_id,
        )
    req.state.wake("recompute")
    return JobAccepted(job_id=job_id, status="pending")


@api.route(
    "GET",
    "/jobs/{job_id}",
    summary="A background job's status and result",
    permission="job.read",
    tag="compliance",
    response=JobOut,
)
async def get_job(req: ApiRequest) -> JobOut:
    me = req.me
    async with req.state.sessions() as session:
        job = await session.get(Job, req.path("job_id"))
    if job is None or job.tenant_id != me.tenant_id:
        raise NotFoundError("no such job", field="job_id")
    result = dict(job.result)
    if not _is_organization_wide(me):
        # A recompute covers the whole tenant; its figures would reveal other subtrees.
        result = {k: v for k, v in result.items() if k in {"reason", "error"}}
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        result=result,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )
