"""Control plane API: signed policy bundles, trusted signing keys and effective policy."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from controlplane.api.devices import device_for
from controlplane.api.tenancy import scope_in_tenant
from controlplane.errors import ConflictError, NotFoundError, UnprocessableError
from controlplane.events import append_event
from controlplane.http import Api, ApiRequest, Strict
from controlplane.models import PolicyBundle, SigningKey, new_id
from controlplane.policy_model import PolicyBundle as BundleDoc
from controlplane.policy_store import (
    bump_revision,
    bundle_verifies,
    load_tenant_policy,
    trusted_keys,
)
from controlplane.recompute import schedule_recompute
from controlplane.signing import (
    ALGORITHM,
    digest,
    key_id_for,
    load_public_key,
    verify_signature,
)

api = Api()


class SignatureIn(Strict):
    alg: Literal["Ed25519"]
    key_id: str = Field(min_length=1, max_length=80)
    """Id of a key registered with ``POST /signing-keys``."""
    value: str = Field(min_length=1, max_length=200)
    """base64url Ed25519 signature over the RFC 8785 canonical JSON of ``bundle``."""


class PolicyPublish(Strict):
    bundle: BundleDoc
    """The bundle version; immutable once accepted."""
    signature: SignatureIn | None = None
    """An author's signature; without one the control plane signs with its own key."""


class PolicyVersionOut(BaseModel):
    policy_id: str
    policy_version: int
    digest: str
    key_id: str
    signed_by: str
    """``control-plane`` or ``author``."""
    created_by: str
    created_at: datetime
    recompute_job_id: str | None = None
    """The job re-evaluating affected devices."""


class PolicyVersionDetail(BaseModel):
    bundle: dict[str, Any]
    digest: str
    signature: dict[str, str]
    active: bool
    """Whether this is the version in force for its policy."""
    verified: bool
    """Whether the stored signature still verifies."""
    created_by: str
    created_at: datetime


class PolicySummary(BaseModel):
    policy_id: str
    active_version: int | None
    latest_version: int
    versions: int
    rejected_versions: list[int]


class PolicyList(BaseModel):
    items: list[PolicySummary]


class KeyIn(Strict):
    public_key: str = Field(min_length=40, max_length=60)
    """Raw Ed25519 public key, base64url."""


class KeyOut(BaseModel):
    key_id: str
    alg: str
    public_key: str
    owner: str
    """``control-plane`` or ``tenant``."""


class KeyList(BaseModel):
    keys: list[KeyOut]


class EffectiveOut(BaseModel):
    target: dict[str, str]
    policy: dict[str, Any] | None
    """None when no valid bundle applies (devices are then in compliance state unknown)."""
    rejected_bundles: list[str]
    """Stored versions skipped because they failed verification."""


@api.route(
    "POST",
    "/policies",
    summary="Publish a policy bundle version",
    permission="policy.write",
    tag="policies",
    body=PolicyPublish,
    response=PolicyVersionOut,
    status=201,
)
async def publish_policy(req: ApiRequest) -> PolicyVersionOut:
    body = req.body
    assert isinstance(body, PolicyPublish) and req.raw is not None
    me, state = req.me, req.state
    document: dict[str, Any] = req.raw["bundle"]
    bundle = body.bundle
    problem: str | None = None
    async with state.writing() as session:
        for scope_id in bundle.scope_bindings:
            await scope_in_tenant(session, me, scope_id)
        existing = (
            await session.execute(
                select(PolicyBundle)
                .where(
                    PolicyBundle.tenant_id == me.tenant_id,
                    PolicyBundle.policy_id == bundle.policy_id,
                )
                .order_by(PolicyBundle.policy_version.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if existing is not None and bundle.policy_version <= existing.policy_version:
            raise ConflictError(
                f"{bundle.policy_id} version {bundle.policy_version} is not newer than "
                f"{existing.policy_version}; versions are immutable",
                field="bundle.policy_version",
                details={"latest_version": existing.policy_version},
            )
        if body.signature is not None:
            keys = await trusted_keys(session, state, me.tenant_id)
            public = keys.get(body.signature.key_id)
            if public is None or not verify_signature(
                document, body.signature.value, load_public_key(public)
            ):
                problem = (
                    "unknown signing key"
                    if public is None
                    else "signature does not verify over the bundle"
                )
    if problem is not None:
        async with state.writing() as session:
            await append_event(
                session,
                tenant_id=me.tenant_id,
                type="policy_rejected",
                action="policy.publish",
                outcome="rejected",
                actor=me.actor,
                correlation_id=req.correlation_id,
                policy_version=f"{bundle.policy_id}@{bundle.policy_version}",
                scope_id=bundle.scope_bindings[0],
                data={"problem": problem},
            )
        raise UnprocessableError(
            f"{bundle.policy_id}@{bundle.policy_version} refused: {problem}; the previous "
            "version stays active",
            field="signature",
        )
    async with state.writing() as session:
        if body.signature is not None:
            key_id, signature, signed_by = body.signature.key_id, body.signature.value, "author"
        else:
            key_id, signature = state.signer.key_id, state.signer.sign(document)
            signed_by = "control-plane"
        row = PolicyBundle(
            id=new_id("pb"),
            tenant_id=me.tenant_id,
            policy_id=bundle.policy_id,
            policy_version=bundle.policy_version,
            content=document,
            digest=digest(document),
            key_id=key_id,
            signature=signature,
            created_by=me.name,
        )
        session.add(row)
        try:
            await session.flush()
        except IntegrityError as exc:  # a concurrent publish of the same version won the race
            raise ConflictError(
                "this policy version was just published by someone else",
                field="bundle.policy_version",
            ) from exc
        await bump_revision(session, me.tenant_id)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="policy_applied",
            action="policy.publish",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            policy_version=f"{bundle.policy_id}@{bundle.policy_version}",
            scope_id=bundle.scope_bindings[0],
            data={
                "digest": row.digest,
                "key_id": key_id,
                "signed_by": signed_by,
                "scope_bindings": bundle.scope_bindings,
            },
        )
        job_id = await schedule_recompute(
            session,
            state,
            me.tenant_id,
            reason=f"policy {bundle.policy_id}@{bundle.policy_version} published",
            actor=me.actor,
            correlation_id=req.correlation_id,
        )
    state.wake("recompute")
    return PolicyVersionOut(
        policy_id=row.policy_id,
        policy_version=row.policy_version,
        digest=row.digest,
        key_id=key_id,
        signed_by=signed_by,
        created_by=row.created_by,
        created_at=row.created_at,
        recompute_job_id=job_id,
    )


@api.route(
    "GET",
    "/policies",
    summary="Policies with their active and latest versions",
    permission="policy.read",
    tag="policies",
    response=PolicyList,
)
async def list_policies(req: ApiRequest) -> PolicyList:
    me = req.me
    async with req.state.sessions() as session:
        tenant_policy = await load_tenant_policy(session, req.state, me.tenant_id)
        rows = (
            await session.execute(
                select(PolicyBundle.policy_id, func.max(PolicyBundle.policy_version), func.count())
                .where(PolicyBundle.tenant_id == me.tenant_id)
                .group_by(PolicyBundle.policy_id)
                .order_by(PolicyBundle.policy_id)
            )
        ).all()
    active = {b.policy_id: b.policy_version for b in tenant_policy.bundles}
    rejected: dict[str, list[int]] = {}
    for item in tenant_policy.rejected:
        pid, _, version = item.partition("@")
        rejected.setdefault(pid, []).append(int(version))
    return PolicyList(
        items=[
            PolicySummary(
                policy_id=pid,
                active_version=active.get(pid),
                latest_version=latest,
                versions=count,
                rejected_versions=sorted(rejected.get(pid, [])),
            )
            for pid, latest, count in rows
        ]
    )


@api.route(
    "GET",
    "/policies/{policy_id}/versions/{version}",
    summary="One stored bundle version",
    permission="policy.read",
    tag="policies",
    response=PolicyVersionDetail,
)
async def get_policy_version(req: ApiRequest) -> PolicyVersionDetail:
    me = req.me
    try:
        version = int(req.path("version"))
    except ValueError:
        raise NotFoundError("versions are whole numbers", field="version") from None
    async with req.state.sessions() as session:
        row = (
            await session.execute(
                select(PolicyBundle).where(
                    PolicyBundle.tenant_id == me.tenant_id,
                    PolicyBundle.policy_id == req.path("policy_id"),
                    PolicyBundle.policy_version == version,
                )
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFoundError("no such policy version")
        keys = await trusted_keys(session, req.state, me.tenant_id)
        tenant_policy = await load_tenant_policy(session, req.state, me.tenant_id)
    active = any(
        b.policy_id == row.policy_id and b.policy_version == row.policy_version
        for b in tenant_policy.bundles
    )
    return PolicyVersionDetail(
        bundle=row.content,
        digest=row.digest,
        signature={"alg": ALGORITHM, "key_id": row.key_id, "value": row.signature},
        active=active,
        verified=bundle_verifies(row, keys),
        created_by=row.created_by,
        created_at=row.created_at,
    )


@api.route(
    "POST",
    "/signing-keys",
    summary="Trust an author's Ed25519 key for bundles",
    permission="signing_key.write",
    tag="policies",
    body=KeyIn,
    response=KeyOut,
    status=201,
)
async def add_signing_key(req: ApiRequest) -> KeyOut:
    body = req.body
    assert isinstance(body, KeyIn)
    me = req.me
    try:
        public = load_public_key(body.public_key)
    except ValueError as exc:
        raise UnprocessableError(f"public_key: {exc}", field="public_key") from None
    key_id = key_id_for(public)
    async with req.state.writing() as session:
        if await session.get(SigningKey, key_id) is not None:
            raise ConflictError(f"key {key_id} is already registered", field="public_key")
        session.add(SigningKey(key_id=key_id, tenant_id=me.tenant_id, public_key=body.public_key))
        await bump_revision(session, me.tenant_id)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="access_changed",
            action="signing_key.add",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={"key_id": key_id},
        )
    return KeyOut(key_id=key_id, alg=ALGORITHM, public_key=body.public_key, owner="tenant")


@api.route(
    "GET",
    "/signing-keys",
    summary="Keys that sign bundles and snapshots",
    permission="policy.read",
    tag="policies",
    response=KeyList,
)
async def list_signing_keys(req: ApiRequest) -> KeyList:
    state = req.state
    keys = [
        KeyOut(
            key_id=state.signer.key_id,
            alg=ALGORITHM,
            public_key=state.signer.public_text,
            owner="control-plane",
        )
    ]
    async with state.sessions() as session:
        rows = (
            await session.execute(
                select(SigningKey)
                .where(SigningKey.tenant_id == req.me.tenant_id)
                .order_by(SigningKey.key_id)
            )
        ).scalars()
        keys.extend(
            KeyOut(key_id=k.key_id, alg=ALGORITHM, public_key=k.public_key, owner="tenant")
            for k in rows
        )
    return KeyList(keys=keys)


@api.route(
    "GET",
    "/scopes/{scope_id}/effective-policy",
    summary="A scope's effective policy with the origin of every rule",
    permission="policy.read",
    tag="policies",
    response=EffectiveOut,
)
async def scope_effective_policy(req: ApiRequest) -> EffectiveOut:
    async with req.state.sessions() as session:
        scope = await scope_in_tenant(session, req.me, req.path("scope_id"))
        tenant_policy = await load_tenant_policy(session, req.state, req.me.tenant_id)
    policy = tenant_policy.effective([scope.id])
    return EffectiveOut(
        target={"scope_id": scope.id},
        policy=None if policy is None else policy.as_document(),
        rejected_bundles=tenant_policy.rejected,
    )


@api.route(
    "GET",
    "/devices/{device_id}/effective-policy",
    summary="A device's effective policy with the origin of every rule",
    permission="policy.read",
    tag="policies",
    response=EffectiveOut,
)
async def device_effective_policy(req: ApiRequest) -> EffectiveOut:
    async with req.state.sessions() as session:
        device, scopes = await device_for(session, req.me, req.path("device_id"))
        tenant_policy = await load_tenant_policy(session, req.state, req.me.tenant_id)
    policy = tenant_policy.effective(scopes)
    return EffectiveOut(
        target={"device_id": device.id},
        policy=None if policy is None else policy.as_document(),
        rejected_bundles=tenant_policy.rejected,
    )
