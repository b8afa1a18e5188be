"""Control plane API: tenants, the scope tree, principals and their API tokens."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import LEVELS, ROLES, Caller, hash_token, require, within
from controlplane.errors import ConflictError, NotFoundError, UnprocessableError
from controlplane.events import append_event
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, paginate
from controlplane.models import ApiToken, Principal, Scope, Tenant, new_id, utcnow
from controlplane.policy_store import bump_revision

api = Api()

Level = Literal["organization", "department", "team", "environment", "device_group"]
Role = Literal[
    "owner",
    "admin",
    "auditor",
    "operator",
    "viewer",
    "platform_admin",
    "packaging_engineer",
    "publisher",
    "cab_approver",
    "security_reviewer",
    "endpoint_ops",
]
assert set(ROLES) == set(Role.__args__)  # type: ignore[attr-defined]
Name = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]*$")


class TenantCreate(Strict):
    name: str = Name
    """Unique tenant name."""
    owner_name: str = Field(
        default="owner", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$"
    )
    """Name of the first principal, who gets the owner role on the whole organization."""


class TenantOut(BaseModel):
    id: str
    name: str
    root_scope_id: str
    created_at: datetime


class TenantCreated(TenantOut):
    owner_principal_id: str
    owner_token: str
    """The owner's API token; shown once."""


class ScopeCreate(Strict):
    parent_id: str = Field(min_length=1, max_length=40)
    """Parent scope; the organization scope is created with the tenant."""
    level: Level
    """Must be more specific than the parent's level."""
    name: str = Name


class ScopeOut(BaseModel):
    id: str
    parent_id: str | None
    level: str
    name: str
    path: str
    created_at: datetime


class ScopeList(BaseModel):
    items: list[ScopeOut]
    next_cursor: str | None


class PrincipalCreate(Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
    """Unique name in the tenant (a user principal name or a service name)."""
    kind: Literal["user", "service"] = "user"
    roles: list[Role] = Field(min_length=1, max_length=11)
    scope_id: str = Field(min_length=1, max_length=40)
    """Root of the subtree the principal may act in."""
    may_act_for_others: bool = False
    """A trusted gateway credential that may assert another principal with ``X-Act-As``."""


class PrincipalOut(BaseModel):
    id: str
    name: str
    kind: str
    roles: list[str]
    scope_id: str
    may_act_for_others: bool
    created_at: datetime


class PrincipalList(BaseModel):
    items: list[PrincipalOut]
    next_cursor: str | None


class TokenCreate(Strict):
    name: str = Name
    """What the token is for."""
    expires_at: datetime | None = None
    """When the token stops working; None means it does not expire."""


class TokenOut(BaseModel):
    id: str
    principal_id: str
    name: str
    token: str
    """The secret; shown once, stored only as a hash."""
    expires_at: datetime | None


class WhoAmI(BaseModel):
    tenant_id: str
    principal_id: str
    name: str
    roles: list[str]
    scope_id: str
    via: str | None


def _scope_out(scope: Scope) -> ScopeOut:
    return ScopeOut.model_validate(scope, from_attributes=True)


def _principal_out(p: Principal) -> PrincipalOut:
    return PrincipalOut.model_validate(p, from_attributes=True)


async def scope_in_tenant(session: AsyncSession, caller: Caller, scope_id: str) -> Scope:
    """A scope of the caller's tenant inside the caller's subtree, else 404 / 403."""
    scope = await session.get(Scope, scope_id)
    if scope is None or scope.tenant_id != caller.tenant_id:
        raise NotFoundError(f"no scope {scope_id!r}", field="scope_id")
    require(within(caller, scope.path))
    return scope


def issue_token() -> str:
    """A new API token secret (256 bits, URL-safe, recognizable prefix for secret scanners)."""
    return "gbt_" + secrets.token_urlsafe(32)


@api.route(
    "POST",
    "/tenants",
    summary="Create a tenant with its organization scope and owner",
    permission=None,
    auth="bootstrap",
    tag="tenancy",
    body=TenantCreate,
    response=TenantCreated,
    status=201,
    shows_secret=True,
)
async def create_tenant(req: ApiRequest) -> TenantCreated:
    body = req.body
    assert isinstance(body, TenantCreate)
    async with req.state.writing() as session:
        if (await session.execute(select(Tenant).where(Tenant.name == body.name))).first():
            raise ConflictError(f"a tenant named {body.name!r} exists", field="name")
        created = await create_tenant_records(
            session, body.name, body.owner_name, req.correlation_id
        )
    return created


async def create_tenant_records(
    session: AsyncSession,
    name: str,
    owner_name: str,
    correlation_id: str,
    *,
    tenant_id: str | None = None,
    secret: str | None = None,
) -> TenantCreated:
    """Create tenant, organization scope, owner principal and owner token in one transaction."""
    tenant = Tenant(id=tenant_id or new_id("ten"), name=name, policy_revision=0)
    session.add(tenant)
    await session.flush()
    root_id = f"scp_{tenant.id.removeprefix('ten_')}"
    root = Scope(
        id=root_id,
        tenant_id=tenant.id,
        parent_id=None,
        level="organization",
        name=name,
        path=f"/{root_id}/",
    )
    owner = Principal(
        id=new_id("prn"),
        tenant_id=tenant.id,
        name=owner_name,
        kind="user",
        roles=["owner"],
        scope_id=root_id,
        may_act_for_others=False,
    )
    session.add_all([root])
    await session.flush()
    session.add(owner)
    await session.flush()
    secret = secret or issue_token()
    session.add(
        ApiToken(
            id=new_id("tok"),
            tenant_id=tenant.id,
            principal_id=owner.id,
            token_hash=hash_token(secret),
            name="owner bootstrap",
        )
    )
    await append_event(
        session,
        tenant_id=tenant.id,
        type="access_changed",
        action="tenant.create",
        outcome="success",
        actor="platform",
        correlation_id=correlation_id,
        scope_id=root_id,
        data={"owner": owner_name},
    )
    return TenantCreated(
        id=tenant.id,
        name=tenant.name,
        root_scope_id=root_id,
        created_at=tenant.created_at,
        owner_principal_id=owner.id,
        owner_token=secret,
    )


@api.route(
    "GET",
    "/tenant",
    summary="The caller's tenant",
    permission="tenant.read",
    tag="tenancy",
    response=TenantOut,
)
async def get_tenant(req: ApiRequest) -> TenantOut:
    async with req.state.sessions() as session:
        tenant = await session.get_one(Tenant, req.me.tenant_id)
        root = (
            await session.execute(
                select(Scope.id).where(Scope.tenant_id == tenant.id, Scope.parent_id.is_(None))
            )
        ).scalar_one()
    return TenantOut(
        id=tenant.id, name=tenant.name, root_scope_id=root, created_at=tenant.created_at
    )


@api.route(
    "GET",
    "/whoami",
    summary="The authenticated principal",
    permission=None,
    tag="tenancy",
    response=WhoAmI,
)
async def whoami(req: ApiRequest) -> WhoAmI:
    me = req.me
    return WhoAmI(
        tenant_id=me.tenant_id,
        principal_id=me.principal_id,
        name=me.name,
        roles=list(me.roles),
        scope_id=me.scope_id,
        via=me.via,
    )


@api.route(
    "POST",
    "/scopes",
    summary="Create a scope under a parent",
    permission="scope.write",
    tag="tenancy",
    body=ScopeCreate,
    response=ScopeOut,
    status=201,
)
async def create_scope(req: ApiRequest) -> ScopeOut:
    body = req.body
    assert isinstance(body, ScopeCreate)
    async with req.state.writing() as session:
        parent = await scope_in_tenant(session, req.me, body.parent_id)
        if LEVELS.index(body.level) <= LEVELS.index(parent.level):
            raise UnprocessableError(
                f"a {body.level} cannot sit under a {parent.level}; levels go "
                + " > ".join(LEVELS),
                field="level",
            )
        scope_id, parent_name = new_id("scp"), parent.name
        scope = Scope(
            id=scope_id,
            tenant_id=req.me.tenant_id,
            parent_id=parent.id,
            level=body.level,
            name=body.name,
            path=f"{parent.path}{scope_id}/",
        )
        session.add(scope)
        try:
            await session.flush()
        except IntegrityError:
            raise ConflictError(
                f"{parent_name!r} already has a child named {body.name!r}", field="name"
            ) from None
        await bump_revision(session, req.me.tenant_id)
        await append_event(
            session,
            tenant_id=req.me.tenant_id,
            type="scope_changed",
            action="scope.create",
            outcome="success",
            actor=req.me.actor,
            correlation_id=req.correlation_id,
            scope_id=scope_id,
            data={"level": body.level, "name": body.name, "parent_id": parent.id},
        )
    return _scope_out(scope)


class ScopeQuery(Page):
    parent_id: str | None = Field(default=None, max_length=40)
    """Only the children of this scope."""
    name: str | None = Field(default=None, min_length=1, max_length=200)
    """Only scopes with this name, compared case-insensitively (siblings' names are unique,
    cousins' need not be)."""


@api.route(
    "GET",
    "/scopes",
    summary="List scopes in the caller's subtree",
    permission="scope.read",
    tag="tenancy",
    query=ScopeQuery,
    response=ScopeList,
)
async def list_scopes(req: ApiRequest) -> ScopeList:
    q = req.query
    assert isinstance(q, ScopeQuery)
    after = decode_cursor(q.cursor)
    stmt = select(Scope).where(
        Scope.tenant_id == req.me.tenant_id,
        Scope.path.startswith(req.me.scope_path, autoescape=True),
    )
    if q.parent_id is not None:
        stmt = stmt.where(Scope.parent_id == q.parent_id)
    if q.name is not None:
        # Names are ASCII (``Name``'s pattern), where SQLite's lower() agrees with PostgreSQL's.
        stmt = stmt.where(func.lower(Scope.name) == q.name.lower())
    if after is not None:
        stmt = stmt.where(Scope.id > after)
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(Scope.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda s: s.id)
    return ScopeList(items=[_scope_out(s) for s in page], next_cursor=cursor)


@api.route(
    "GET",
    "/scopes/{scope_id}",
    summary="One scope",
    permission="scope.read",
    tag="tenancy",
    response=ScopeOut,
)
async def get_scope(req: ApiRequest) -> ScopeOut:
    async with req.state.sessions() as session:
        return _scope_out(await scope_in_tenant(session, req.me, req.path("scope_id")))


@api.route(
    "POST",
    "/principals",
    summary="Create a principal with roles and a scope subtree",
    permission="principal.write",
    tag="tenancy",
    body=PrincipalCreate,
    response=PrincipalOut,
    status=201,
)
async def create_principal(req: ApiRequest) -> PrincipalOut:
    body = req.body
    assert isinstance(body, PrincipalCreate)
    me = req.me
    if "owner" in body.roles and "owner" not in me.roles:
        raise UnprocessableError("only an owner may grant the owner role", field="roles")
    if body.may_act_for_others and not {"owner", "admin"} & set(me.roles):
        raise UnprocessableError(
            "only an owner or admin may create a gateway credential", field="may_act_for_others"
        )
    async with req.state.writing() as session:
        await scope_in_tenant(session, me, body.scope_id)
        principal = Principal(
            id=new_id("prn"),
            tenant_id=me.tenant_id,
            name=body.name,
            kind=body.kind,
            roles=sorted(set(body.roles)),
            scope_id=body.scope_id,
            may_act_for_others=body.may_act_for_others,
        )
        session.add(principal)
        try:
            await session.flush()
        except IntegrityError:
            raise ConflictError(f"a principal named {body.name!r} exists", field="name") from None
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="access_changed",
            action="principal.create",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=body.scope_id,
            data={
                "principal": body.name,
                "roles": principal.roles,
                "may_act_for_others": body.may_act_for_others,
            },
        )
    return _principal_out(principal)


@api.route(
    "GET",
    "/principals",
    summary="List principals",
    permission="principal.read",
    tag="tenancy",
    query=Page,
    response=PrincipalList,
)
async def list_principals(req: ApiRequest) -> PrincipalList:
    q = req.query
    assert isinstance(q, Page)
    after = decode_cursor(q.cursor)
    stmt = select(Principal).where(Principal.tenant_id == req.me.tenant_id)
    if after is not None:
        stmt = stmt.where(Principal.id > after)
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(Principal.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda p: p.id)
    return PrincipalList(items=[_principal_out(p) for p in page], next_cursor=cursor)


@api.route(
    "POST",
    "/principals/{principal_id}/tokens",
    summary="Issue an API token",
    permission="token.write",
    tag="tenancy",
    body=TokenCreate,
    response=TokenOut,
    status=201,
    shows_secret=True,
)
async def create_token(req: ApiRequest) -> TokenOut:
    body = req.body
    assert isinstance(body, TokenCreate)
    me = req.me
    if body.expires_at is not None and (
        body.expires_at.tzinfo is None or body.expires_at <= utcnow()
    ):
        raise UnprocessableError("expires_at must be a future time with a zone", field="expires_at")
    async with req.state.writing() as session:
        principal = await session.get(Principal, req.path("principal_id"))
        if principal is None or principal.tenant_id != me.tenant_id:
            raise NotFoundError("no such principal", field="principal_id")
        await scope_in_tenant(session, me, principal.scope_id)
        secret = issue_token()
        token = ApiToken(
            id=new_id("tok"),
            tenant_id=me.tenant_id,
            principal_id=principal.id,
            token_hash=hash_token(secret),
            name=body.name,
            expires_at=body.expires_at,
        )
        session.add(token)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="access_changed",
            action="token.create",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={"principal": principal.name, "token_id": token.id},
        )
    return TokenOut(
        id=token.id,
        principal_id=principal.id,
        name=body.name,
        token=secret,
        expires_at=body.expires_at,
    )


@api.route(
    "DELETE",
    "/tokens/{token_id}",
    summary="Revoke an API token",
    permission="token.write",
    tag="tenancy",
)
async def revoke_token(req: ApiRequest) -> None:
    me = req.me
    async with req.state.writing() as session:
        token = await session.get(ApiToken, req.path("token_id"))
        if token is None or token.tenant_id != me.tenant_id:
            raise NotFoundError("no such token", field="token_id")
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            for key in [k for k in req.state.auth_cache if k[0] == token.token_hash]:
                del req.state.auth_cache[key]
            await append_event(
                session,
                tenant_id=me.tenant_id,
                type="access_changed",
                action="token.revoke",
                outcome="success",
                actor=me.actor,
                correlation_id=req.correlation_id,
                data={"token_id": token.id},
            )
