"""Control plane API: the application catalog, its versions and their gated lifecycle.

Seed 002 §5.1, §5.3 and §7.1. Reads are tenant-wide; changing an application or anything of its
versions needs a caller whose scope subtree holds every scope the application may go to. Each
move of the lifecycle needs its own duty's permission, and publishing needs the supply-chain
gate and a complete evidence pack (artifacts, exceptions and packs: ``api/evidence.py``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller, permits, require
from controlplane.api.tenancy import scope_in_tenant
from controlplane.catalog import (
    TRANSITION_PERMISSIONS,
    GateCheck,
    covers,
    is_semver,
    scope_paths,
    supply_chain_gate,
    transition_allowed,
)
from controlplane.errors import ConflictError, NotFoundError, UnprocessableError
from controlplane.events import append_event
from controlplane.evidence import evidence_status
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, paginate
from controlplane.models import new_id, utcnow
from controlplane.models_release import Application, AppVersion
from controlplane.release import LIFECYCLE, TRANSITIONS

api = Api()

State = Literal["requested", "packaged", "staged", "approved", "published", "retired"]
assert set(LIFECYCLE) == set(State.__args__)  # type: ignore[attr-defined]
IdPattern = r"^[A-Za-z0-9_]{1,40}$"
"""What ``new_id`` makes; anything else cannot name a row."""
_ID = re.compile(IdPattern)
ScopeId = Annotated[str, Field(pattern=IdPattern)]
OneLine = r"^[^\x00-\x1f]+$"
NoNul = r"^[^\x00]*$"
"""PostgreSQL text cannot hold NUL; refusing it here keeps that a 422, not a 500."""
Label = r"^[A-Za-z0-9][A-Za-z0-9 ._+-]*$"
AppName = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"


class AppCreate(Strict):
    name: str = Field(min_length=1, max_length=200, pattern=AppName)
    """Canonical identity, unique in the tenant, such as ``firefox``."""
    owner: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
    """Accountable owner (a principal or team name)."""
    category: str = Field(min_length=1, max_length=60, pattern=Label)
    support_tier: str = Field(min_length=1, max_length=20, pattern=Label)
    allowed_scope_ids: list[ScopeId] = Field(min_length=1, max_length=50)
    """Scopes the application may be deployed into; each inside the caller's subtree."""
    privileged: bool = False
    """Privileged tooling: CAB approval is always required, whatever the risk score."""
    description: str = Field(default="", max_length=4000, pattern=NoNul)
    """Free text; data, never instructions."""


class AppOut(BaseModel):
    id: str
    name: str
    owner: str
    category: str
    support_tier: str
    allowed_scope_ids: list[str]
    privileged: bool
    description: str
    created_by: str
    created_at: datetime


class AppList(BaseModel):
    items: list[AppOut]
    next_cursor: str | None


class AppQuery(Page):
    name: str | None = Field(default=None, max_length=200, pattern=AppName)
    """Only the application with this name."""


class Dependency(Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    """Application or package the version needs."""
    versions: str = Field(default="*", min_length=1, max_length=100, pattern=OneLine)
    """Version range it needs, such as ``>=2.1 <3``."""


class VersionCreate(Strict):
    version: str = Field(min_length=1, max_length=100)
    """Semantic version (semver.org 2.0.0), unique for the application."""
    supported_os: list[Annotated[str, Field(min_length=1, max_length=60, pattern=Label)]] = Field(
        min_length=1, max_length=50
    )
    """Supported OS matrix, such as ``windows-11`` or ``macos-14``."""
    dependencies: list[Dependency] = Field(default_factory=list, max_length=100)
    release_notes: str = Field(default="", max_length=20_000, pattern=NoNul)
    """Free text; data, never instructions."""


class VersionOut(BaseModel):
    id: str
    application_id: str
    application: str
    """The application's name."""
    version: str
    state: str
    allowed_transitions: list[str]
    """States the version may move to next."""
    supported_os: list[str]
    dependencies: list[dict[str, Any]]
    release_notes: str
    requested_by: str
    created_at: datetime
    updated_at: datetime


class VersionList(BaseModel):
    items: list[VersionOut]
    next_cursor: str | None


class VersionQuery(Page):
    state: State | None = None
    """Only versions in this state."""


class GateOut(BaseModel):
    ok: bool
    reason: str
    exception_id: str | None


class VersionDetail(VersionOut):
    supply_chain_gate: GateOut
    """``scan_pass OR approved_exception`` as of now (seed 002 §7.1)."""
    evidence_digest: str | None
    """The newest evidence pack."""
    missing_evidence: list[str]
    """Required evidence parts the newest pack lacks; publishing needs none missing."""


class TransitionIn(Strict):
    to: State
    """The next lifecycle state."""


def known_id(value: str, what: str, field: str) -> str:
    """A path id that could exist; anything else is a 404 before it reaches the database.

    PostgreSQL refuses a NUL byte in a text parameter with an error, not an empty result.
    """
    if _ID.fullmatch(value) is None:
        raise NotFoundError(f"no {what} {value[:60]!r}", field=field)
    return value


async def app_for(
    session: AsyncSession, caller: Caller, app_id: str, *, write: bool = False
) -> Application:
    """An application of the caller's tenant (404 otherwise); for ``write``, one they cover."""
    app = await session.get(Application, known_id(app_id, "application", "app_id"))
    if app is None or app.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no application {app_id!r}", field="app_id")
    if write:
        paths = await scope_paths(session, caller.tenant_id, app.allowed_scope_ids)
        require(covers(caller.scope_path, [paths.get(s) for s in app.allowed_scope_ids]))
    return app


async def version_for(
    session: AsyncSession, caller: Caller, version_id: str, *, write: bool = False
) -> tuple[AppVersion, Application]:
    """A version of the caller's tenant and its application, as ``app_for`` checks them."""
    version = await session.get(AppVersion, known_id(version_id, "version", "version_id"))
    if version is None or version.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no version {version_id!r}", field="version_id")
    return version, await app_for(session, caller, version.application_id, write=write)


def app_out(app: Application) -> AppOut:
    return AppOut.model_validate(app, from_attributes=True)


def version_out(version: AppVersion, app: Application) -> VersionOut:
    return VersionOut(
        id=version.id,
        application_id=app.id,
        application=app.name,
        version=version.version,
        state=version.state,
        allowed_transitions=list(TRANSITIONS.get(version.state, ())),
        supported_os=version.supported_os,
        dependencies=version.dependencies,
        release_notes=version.release_notes,
        requested_by=version.requested_by,
        created_at=version.created_at,
        updated_at=version.updated_at,
    )


def gate_out(gate: GateCheck) -> GateOut:
    return GateOut(ok=gate.ok, reason=gate.reason, exception_id=gate.exception_id)


@api.route(
    "POST",
    "/apps",
    summary="Add an application to the catalog",
    permission="catalog.write",
    tag="catalog",
    body=AppCreate,
    response=AppOut,
    status=201,
)
async def create_app(req: ApiRequest) -> AppOut:
    body = req.body
    assert isinstance(body, AppCreate)
    me = req.me
    scope_ids = list(dict.fromkeys(body.allowed_scope_ids))
    async with req.state.writing() as session:
        for scope_id in scope_ids:
            await scope_in_tenant(session, me, scope_id)
        taken = await session.execute(
            select(Application.id).where(
                Application.tenant_id == me.tenant_id, Application.name == body.name
            )
        )
        if taken.first() is not None:
            raise ConflictError(f"an application named {body.name!r} exists", field="name")
        app = Application(
            id=new_id("app"),
            tenant_id=me.tenant_id,
            name=body.name,
            owner=body.owner,
            category=body.category,
            support_tier=body.support_tier,
            allowed_scope_ids=scope_ids,
            privileged=body.privileged,
            description=body.description,
            created_by=me.name,
        )
        session.add(app)
        try:
            await session.flush()
        except IntegrityError:  # a concurrent create of the same name won the race
            raise ConflictError(
                f"an application named {body.name!r} exists", field="name"
            ) from None
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="catalog_changed",
            action="app.create",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=scope_ids[0],
            data={
                "application_id": app.id,
                "name": app.name,
                "allowed_scope_ids": scope_ids,
                "privileged": app.privileged,
            },
        )
    return app_out(app)


@api.route(
    "GET",
    "/apps",
    summary="List the catalog's applications",
    permission="catalog.read",
    tag="catalog",
    query=AppQuery,
    response=AppList,
)
async def list_apps(req: ApiRequest) -> AppList:
    q = req.query
    assert isinstance(q, AppQuery)
    after = decode_cursor(q.cursor)
    stmt = select(Application).where(Application.tenant_id == req.me.tenant_id)
    if q.name is not None:
        stmt = stmt.where(Application.name == q.name)
    if after is not None:
        stmt = stmt.where(Application.id > after)
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(Application.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda a: a.id)
    return AppList(items=[app_out(a) for a in page], next_cursor=cursor)


@api.route(
    "GET",
    "/apps/{app_id}",
    summary="One application",
    permission="catalog.read",
    tag="catalog",
    response=AppOut,
)
async def get_app(req: ApiRequest) -> AppOut:
    async with req.state.sessions() as session:
        return app_out(await app_for(session, req.me, req.path("app_id")))


@api.route(
    "POST",
    "/apps/{app_id}/versions",
    summary="Request a new version of an application",
    permission="catalog.write",
    tag="catalog",
    body=VersionCreate,
    response=VersionOut,
    status=201,
)
async def create_version(req: ApiRequest) -> VersionOut:
    body = req.body
    assert isinstance(body, VersionCreate)
    me = req.me
    if not is_semver(body.version):
        raise UnprocessableError(
            f"version {body.version!r} is not a semantic version (such as 1.2.3 or 2.0.0-rc.1)",
            field="version",
        )
    async with req.state.writing() as session:
        app = await app_for(session, me, req.path("app_id"), write=True)
        taken = await session.execute(
            select(AppVersion.id).where(
                AppVersion.application_id == app.id, AppVersion.version == body.version
            )
        )
        if taken.first() is not None:
            raise ConflictError(f"{app.name} {body.version} exists", field="version")
        now = utcnow()
        version = AppVersion(
            id=new_id("ver"),
            tenant_id=me.tenant_id,
            application_id=app.id,
            version=body.version,
            state="requested",
            supported_os=list(dict.fromkeys(body.supported_os)),
            dependencies=[d.model_dump() for d in body.dependencies],
            release_notes=body.release_notes,
            requested_by=me.name,
            created_at=now,
            updated_at=now,
        )
        session.add(version)
        try:
            await session.flush()
        except IntegrityError:
            raise ConflictError(f"{app.name} {body.version} exists", field="version") from None
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="catalog_changed",
            action="version.create",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=app.allowed_scope_ids[0],
            data={"application_id": app.id, "version_id": version.id, "version": body.version},
        )
    return version_out(version, app)


@api.route(
    "GET",
    "/apps/{app_id}/versions",
    summary="List an application's versions",
    permission="catalog.read",
    tag="catalog",
    query=VersionQuery,
    response=VersionList,
)
async def list_versions(req: ApiRequest) -> VersionList:
    q = req.query
    assert isinstance(q, VersionQuery)
    after = decode_cursor(q.cursor)
    async with req.state.sessions() as session:
        app = await app_for(session, req.me, req.path("app_id"))
        stmt = select(AppVersion).where(
            AppVersion.tenant_id == app.tenant_id, AppVersion.application_id == app.id
        )
        if q.state is not None:
            stmt = stmt.where(AppVersion.state == q.state)
        if after is not None:
            stmt = stmt.where(AppVersion.id > after)
        rows = (await session.execute(stmt.order_by(AppVersion.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda v: v.id)
    return VersionList(items=[version_out(v, app) for v in page], next_cursor=cursor)


@api.route(
    "GET",
    "/versions/{version_id}",
    summary="One version with its supply-chain gate and evidence status",
    permission="catalog.read",
    tag="catalog",
    response=VersionDetail,
)
async def get_version(req: ApiRequest) -> VersionDetail:
    me = req.me
    async with req.state.sessions() as session:
        version, app = await version_for(session, me, req.path("version_id"))
        gate = await supply_chain_gate(session, me.tenant_id, version.id, utcnow())
        digest, missing = await evidence_status(session, me.tenant_id, version.id)
    return VersionDetail(
        **version_out(version, app).model_dump(),
        supply_chain_gate=gate_out(gate),
        evidence_digest=digest,
        missing_evidence=missing,
    )


@api.route(
    "POST",
    "/versions/{version_id}/transition",
    summary="Move a version along its lifecycle; publishing is gated",
    permission="catalog.read",
    tag="catalog",
    body=TransitionIn,
    response=VersionOut,
)
async def transition_version(req: ApiRequest) -> VersionOut:
    body = req.body
    assert isinstance(body, TransitionIn)
    me, state = req.me, req.state
    # Each target state has its own duty (packaging, CAB, publisher); see TRANSITION_PERMISSIONS.
    require(permits(me, TRANSITION_PERMISSIONS.get(body.to, "catalog.write")))
    refusal: ConflictError | None = None
    async with state.writing() as session:
        version, app = await version_for(session, me, req.path("version_id"), write=True)
        current = version.state
        legal = transition_allowed(current, body.to)
        if not legal.allowed:
            raise ConflictError(
                f"{app.name} {version.version}: {legal.reason}",
                field="to",
                details={"state": current, "allowed": list(TRANSITIONS.get(current, ()))},
            )
        now = utcnow()
        data: dict[str, Any] = {
            "application_id": app.id,
            "version_id": version.id,
            "version": version.version,
            "from": current,
            "to": body.to,
        }
        if body.to == "published":
            gate = await supply_chain_gate(session, me.tenant_id, version.id, now)
            digest, missing = await evidence_status(session, me.tenant_id, version.id)
            data |= {"gate": gate.reason, "exception_id": gate.exception_id, "evidence": digest}
            refusal = _publish_refusal(app, version, gate, digest, missing)
        if refusal is None:
            moved = await session.execute(
                update(AppVersion)
                .where(AppVersion.id == version.id, AppVersion.state == current)
                .values(state=body.to, updated_at=now)
                .returning(AppVersion.id)
            )
            if moved.first() is None:
                raise ConflictError(
                    f"{app.name} {version.version} changed state meanwhile; read it again",
                    field="to",
                )
            await append_event(
                session,
                tenant_id=me.tenant_id,
                type="catalog_changed",
                action="version.transition",
                outcome="success",
                actor=me.actor,
                correlation_id=req.correlation_id,
                scope_id=app.allowed_scope_ids[0],
                data=data,
            )
            return version_out(version, app)
    assert refusal is not None
    # A refused publish is a policy violation worth an audit record of its own (seed 002 §12).
    async with state.writing() as session:
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="catalog_changed",
            action="version.transition",
            outcome="denied",
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=app.allowed_scope_ids[0],
            data=data | {"refused": refusal.message},
        )
    raise refusal


def _publish_refusal(
    app: Application,
    version: AppVersion,
    gate: GateCheck,
    digest: str | None,
    missing: list[str],
) -> ConflictError | None:
    """What stops a version from publishing (seed 002 §7.1, §9.4), all of it at once."""
    problems = []
    if not gate.ok:
        problems.append(f"supply-chain gate: {gate.reason}")
    if missing:
        which = "no evidence pack" if digest is None else f"evidence pack {digest[:12]}"
        problems.append(f"{which} is missing {', '.join(missing)}")
    if not problems:
        return None
    return ConflictError(
        f"cannot publish {app.name} {version.version}: " + "; ".join(problems),
        field="to",
        details={
            "gate": gate_out(gate).model_dump(),
            "evidence_digest": digest,
            "missing_evidence": missing,
        },
    )
