"""Control plane API: a version's supply chain, its artifacts, risk exceptions and evidence.

Seed 002 §7.1, §9.4 and §9.5: what a release brings to review. An artifact records a binary's
hash, signature, SBOM and scan; an exception is requested by packaging or publishing and decided
by a security reviewer who is not the requester; an evidence pack is stored once under the
sha256 of its canonical JSON and never changes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import require
from controlplane.api.catalog import IdPattern, NoNul, OneLine, known_id, version_for
from controlplane.catalog import EXCEPTION_MAX_DAYS, may_decide
from controlplane.errors import ConflictError, NotFoundError, UnprocessableError
from controlplane.events import append_event
from controlplane.evidence import (
    EvidenceContentError,
    has_approved_exception,
    missing_parts,
    newest_pack,
    pack_content,
    pack_digest,
)
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, json_response, paginate
from controlplane.models import Principal, new_id, utcnow
from controlplane.models_release import Artifact, EvidencePack, RiskException
from controlplane.signing import digest

api = Api()

Platform = Literal["windows", "macos", "linux", "ios", "android"]
Text = r"^[^\x00]*[^\x00\s][^\x00]*$"
"""Not blank, and no NUL (which PostgreSQL text cannot hold)."""
Control = Annotated[
    str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]*[^\x00-\x20][^\x00-\x1f]*$")
]
DIGEST = re.compile(r"^[0-9a-f]{64}$")
PartName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,59}$")]


class Signing(Strict):
    signer: str = Field(min_length=1, max_length=200, pattern=OneLine)
    """Signing identity (certificate subject, Developer ID, repository key)."""
    thumbprint: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f:]{8,200}$")
    notarized: bool | None = None
    """Apple notarization, where it applies."""
    valid: bool
    """Whether the signature verified in the packaging pipeline."""


class Findings(Strict):
    critical: int = Field(default=0, ge=0, le=1_000_000)
    high: int = Field(default=0, ge=0, le=1_000_000)
    medium: int = Field(default=0, ge=0, le=1_000_000)
    low: int = Field(default=0, ge=0, le=1_000_000)


class ArtifactCreate(Strict):
    platform: Platform
    sha256: str = Field(pattern=r"^[0-9A-Fa-f]{64}$")
    """SHA-256 of the package binary, hex."""
    signing: Signing
    sbom_ref: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x20]+$")
    """Where the SBOM (SPDX or CycloneDX) is stored."""
    scan_result: Literal["pass", "fail", "exception"]
    """The scanner's policy decision; ``pass`` is refused when critical or high findings exist."""
    findings: Findings = Field(default_factory=Findings)
    """Vulnerability counts by severity."""


class ArtifactOut(BaseModel):
    id: str
    version_id: str
    platform: str
    sha256: str
    signing: dict[str, Any]
    sbom_ref: str | None
    scan_result: str
    findings: dict[str, int]
    created_at: datetime


class ArtifactList(BaseModel):
    items: list[ArtifactOut]
    next_cursor: str | None


ARTIFACT_STATES = ("requested", "packaged", "staged")
"""Versions still being built: later, adding a binary would change what was approved."""


class ExceptionCreate(Strict):
    kind: Literal["vulnerability"]
    """What is waived; ``vulnerability`` lets a failed scan through the supply-chain gate."""
    reason: str = Field(min_length=1, max_length=4000, pattern=Text)
    """Why the version must ship despite the finding."""
    compensating_controls: list[Control] = Field(min_length=1, max_length=20)
    """Tighter ring limits, extra monitoring and the like; at least one."""
    owner: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
    """Named accountable owner: a principal of the tenant."""
    expires_at: AwareDatetime
    """When the exception stops counting; in the future, at most 90 days away."""

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None


class ExceptionOut(BaseModel):
    id: str
    version_id: str
    kind: str
    reason: str
    compensating_controls: list[str]
    owner: str
    expires_at: datetime
    state: str
    """requested, approved or denied."""
    active: bool
    """Approved and not yet expired: the supply-chain gate honours it now."""
    requested_by: str
    decided_by: str | None
    decided_at: datetime | None
    intent_id: str | None
    created_at: datetime


class ExceptionList(BaseModel):
    items: list[ExceptionOut]
    next_cursor: str | None


class ExceptionQuery(Page):
    state: Literal["requested", "approved", "denied"] | None = None
    """Only exceptions in this state."""
    version_id: str | None = Field(default=None, pattern=IdPattern)
    """Only exceptions of this version."""


class DecisionIn(Strict):
    decision: Literal["approve", "deny"]
    comment: str = Field(default="", max_length=4000, pattern=NoNul)
    """Recorded with the decision in the audit trail."""


class EvidenceIn(Strict):
    parts: dict[PartName, dict[str, Any]] = Field(min_length=1, max_length=40)
    """Part name → content object; see ``release.EVIDENCE_PARTS`` for the required ones."""


class EvidenceOut(BaseModel):
    digest: str
    """sha256 hex of the RFC 8785 canonical JSON of ``content``: the pack's address."""
    version_id: str
    content: dict[str, Any]
    missing: list[str]
    """Required parts this pack lacks (empty: complete)."""
    verified: bool
    """Whether the stored content still hashes to ``digest``."""
    created_by: str
    created_at: datetime


class VersionEvidence(BaseModel):
    version_id: str
    pack: EvidenceOut | None
    """The newest pack, if any."""
    missing: list[str]
    """Required parts the newest pack lacks; all of them when there is no pack."""


def exception_out(row: RiskException, now: datetime) -> ExceptionOut:
    return ExceptionOut(
        id=row.id,
        version_id=row.version_id,
        kind=row.kind,
        reason=row.reason,
        compensating_controls=row.compensating_controls,
        owner=row.owner,
        expires_at=row.expires_at,
        state=row.state,
        active=row.state == "approved" and row.expires_at > now,
        requested_by=row.requested_by,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        intent_id=row.intent_id,
        created_at=row.created_at,
    )


def evidence_out(pack: EvidencePack, need_exceptions: bool) -> EvidenceOut:
    return EvidenceOut(
        digest=pack.digest,
        version_id=pack.version_id,
        content=pack.content,
        missing=missing_parts(pack.content.get("parts", {}), need_exceptions),
        verified=digest(pack.content) == pack.digest,
        created_by=pack.created_by,
        created_at=pack.created_at,
    )


@api.route(
    "POST",
    "/versions/{version_id}/artifacts",
    summary="Register a signed, scanned artifact of a version",
    permission="artifact.write",
    tag="catalog",
    body=ArtifactCreate,
    response=ArtifactOut,
    status=201,
)
async def register_artifact(req: ApiRequest) -> ArtifactOut:
    body = req.body
    assert isinstance(body, ArtifactCreate)
    me = req.me
    findings = body.findings
    if body.scan_result == "pass" and (findings.critical or findings.high):
        # Seed 002 §7.1: critical and high block by default; only an exception waives them.
        raise UnprocessableError(
            f"a scan with {findings.critical} critical and {findings.high} high findings cannot "
            "pass; report it as fail and request an exception if it must ship",
            field="scan_result",
        )
    async with req.state.writing() as session:
        version, app = await version_for(session, me, req.path("version_id"), write=True)
        if version.state not in ARTIFACT_STATES:
            raise ConflictError(
                f"{app.name} {version.version} is {version.state}; artifacts are added while a "
                f"version is {', '.join(ARTIFACT_STATES)}",
                field="version_id",
            )
        artifact = Artifact(
            id=new_id("art"),
            tenant_id=me.tenant_id,
            version_id=version.id,
            platform=body.platform,
            sha256=body.sha256.lower(),
            signing=body.signing.model_dump(),
            sbom_ref=body.sbom_ref,
            scan_result=body.scan_result,
            findings=findings.model_dump(),
            created_at=utcnow(),
        )
        session.add(artifact)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="artifact_registered",
            action="artifact.register",
            outcome=body.scan_result,
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=app.allowed_scope_ids[0],
            data={
                "artifact_id": artifact.id,
                "version_id": version.id,
                "platform": artifact.platform,
                "sha256": artifact.sha256,
                "signature_valid": body.signing.valid,
                "findings": artifact.findings,
            },
        )
    return ArtifactOut.model_validate(artifact, from_attributes=True)


@api.route(
    "GET",
    "/versions/{version_id}/artifacts",
    summary="List a version's artifacts",
    permission="catalog.read",
    tag="catalog",
    query=Page,
    response=ArtifactList,
)
async def list_artifacts(req: ApiRequest) -> ArtifactList:
    q = req.query
    assert isinstance(q, Page)
    after = decode_cursor(q.cursor)
    async with req.state.sessions() as session:
        version, _ = await version_for(session, req.me, req.path("version_id"))
        stmt = select(Artifact).where(
            Artifact.tenant_id == version.tenant_id, Artifact.version_id == version.id
        )
        if after is not None:
            stmt = stmt.where(Artifact.id > after)
        rows = (await session.execute(stmt.order_by(Artifact.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda a: a.id)
    return ArtifactList(
        items=[ArtifactOut.model_validate(a, from_attributes=True) for a in page],
        next_cursor=cursor,
    )


@api.route(
    "POST",
    "/versions/{version_id}/exceptions",
    summary="Request a time-boxed exception for a version",
    permission="exception.request",
    tag="exceptions",
    body=ExceptionCreate,
    response=ExceptionOut,
    status=201,
)
async def request_exception(req: ApiRequest) -> ExceptionOut:
    body = req.body
    assert isinstance(body, ExceptionCreate)
    me, now = req.me, utcnow()
    if body.expires_at <= now:
        raise UnprocessableError("expires_at must be in the future", field="expires_at")
    if body.expires_at > now + timedelta(days=EXCEPTION_MAX_DAYS):
        raise UnprocessableError(
            f"an exception runs at most {EXCEPTION_MAX_DAYS} days; expires_at is later",
            field="expires_at",
        )
    async with req.state.writing() as session:
        version, app = await version_for(session, me, req.path("version_id"), write=True)
        if version.state == "retired":
            raise ConflictError(f"{app.name} {version.version} is retired", field="version_id")
        owner = await session.execute(
            select(Principal.id).where(
                Principal.tenant_id == me.tenant_id, Principal.name == body.owner
            )
        )
        if owner.first() is None:
            raise UnprocessableError(
                f"owner {body.owner!r} is not a principal of this tenant", field="owner"
            )
        row = RiskException(
            id=new_id("exc"),
            tenant_id=me.tenant_id,
            version_id=version.id,
            kind=body.kind,
            reason=body.reason,
            compensating_controls=list(body.compensating_controls),
            owner=body.owner,
            expires_at=body.expires_at,
            state="requested",
            requested_by=me.name,
            expiry_notified=False,
            created_at=now,
        )
        session.add(row)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="exception_requested",
            action="exception.request",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=app.allowed_scope_ids[0],
            data={
                "exception_id": row.id,
                "version_id": version.id,
                "kind": body.kind,
                "owner": body.owner,
                "expires_at": body.expires_at.isoformat(),
                "compensating_controls": row.compensating_controls,
            },
        )
    return exception_out(row, now)


@api.route(
    "GET",
    "/exceptions",
    summary="List exceptions",
    permission="risk.read",
    tag="exceptions",
    query=ExceptionQuery,
    response=ExceptionList,
)
async def list_exceptions(req: ApiRequest) -> ExceptionList:
    q = req.query
    assert isinstance(q, ExceptionQuery)
    after = decode_cursor(q.cursor)
    stmt = select(RiskException).where(RiskException.tenant_id == req.me.tenant_id)
    if q.state is not None:
        stmt = stmt.where(RiskException.state == q.state)
    if q.version_id is not None:
        stmt = stmt.where(RiskException.version_id == q.version_id)
    if after is not None:
        stmt = stmt.where(RiskException.id > after)
    now = utcnow()
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(RiskException.id).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda e: e.id)
    return ExceptionList(items=[exception_out(e, now) for e in page], next_cursor=cursor)


async def _exception(session: AsyncSession, tenant_id: str, exception_id: str) -> RiskException:
    row = await session.get(RiskException, known_id(exception_id, "exception", "exception_id"))
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError(f"no exception {exception_id!r}", field="exception_id")
    return row


@api.route(
    "GET",
    "/exceptions/{exception_id}",
    summary="One exception",
    permission="risk.read",
    tag="exceptions",
    response=ExceptionOut,
)
async def get_exception(req: ApiRequest) -> ExceptionOut:
    async with req.state.sessions() as session:
        row = await _exception(session, req.me.tenant_id, req.path("exception_id"))
    return exception_out(row, utcnow())


@api.route(
    "POST",
    "/exceptions/{exception_id}/decision",
    summary="Approve or deny an exception (a security reviewer other than the requester)",
    permission="exception.decide",
    tag="exceptions",
    body=DecisionIn,
    response=ExceptionOut,
)
async def decide_exception(req: ApiRequest) -> ExceptionOut:
    body = req.body
    assert isinstance(body, DecisionIn)
    me, now = req.me, utcnow()
    outcome = "approved" if body.decision == "approve" else "denied"
    async with req.state.writing() as session:
        row = await _exception(session, me.tenant_id, req.path("exception_id"))
        _, app = await version_for(session, me, row.version_id, write=True)
        require(may_decide(me.roles, me.name, row))
        if row.state != "requested":
            raise ConflictError(
                f"exception {row.id} was already {row.state} by {row.decided_by}",
                field="exception_id",
                details={"state": row.state},
            )
        if outcome == "approved" and row.expires_at <= now:
            raise ConflictError(
                f"exception {row.id} expired before it was approved; request a new one",
                field="exception_id",
            )
        decided = await session.execute(
            update(RiskException)
            .where(RiskException.id == row.id, RiskException.state == "requested")
            .values(state=outcome, decided_by=me.name, decided_at=now)
            .returning(RiskException.id)
        )
        if decided.first() is None:
            raise ConflictError(
                f"exception {row.id} was decided meanwhile; read it again", field="exception_id"
            )
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="exception_decided",
            action="exception.decide",
            outcome=outcome,
            actor=me.actor,
            correlation_id=req.correlation_id,
            scope_id=app.allowed_scope_ids[0],
            data={
                "exception_id": row.id,
                "version_id": row.version_id,
                "requested_by": row.requested_by,
                "expires_at": row.expires_at.isoformat(),
                "comment": body.comment,
            },
        )
    return exception_out(row, now)


@api.route(
    "POST",
    "/versions/{version_id}/evidence",
    summary="Store an evidence pack (content-addressed; the same content is the same pack)",
    permission="evidence.write",
    tag="evidence",
    body=EvidenceIn,
    response=EvidenceOut,
    status=201,
)
async def store_evidence(req: ApiRequest) -> Any:
    assert isinstance(req.body, EvidenceIn) and req.raw is not None
    me = req.me
    address: str | None = None
    try:
        async with req.state.writing() as session:
            version, app = await version_for(session, me, req.path("version_id"), write=True)
            # The parts exactly as sent: the digest must not depend on pydantic's re-serializing.
            content = pack_content(app.name, version.version, version.id, req.raw["parts"])
            try:
                address = pack_digest(content)
            except EvidenceContentError as exc:
                raise UnprocessableError(f"{exc.path}: {exc}", field=exc.path) from None
            need_exceptions = await has_approved_exception(session, me.tenant_id, version.id)
            existing = await session.get(EvidencePack, address)
            if existing is not None:
                return json_response(evidence_out(existing, need_exceptions), 200)
            pack = EvidencePack(
                digest=address,
                tenant_id=me.tenant_id,
                version_id=version.id,
                content=content,
                created_by=me.name,
                created_at=utcnow(),
            )
            session.add(pack)
            await session.flush()
            out = evidence_out(pack, need_exceptions)
            await append_event(
                session,
                tenant_id=me.tenant_id,
                type="evidence_stored",
                action="evidence.store",
                outcome="incomplete" if out.missing else "complete",
                actor=me.actor,
                correlation_id=req.correlation_id,
                scope_id=app.allowed_scope_ids[0],
                data={"digest": address, "version_id": version.id, "missing": out.missing},
            )
        return out
    except IntegrityError:
        # Another request stored the same content first (PostgreSQL; SQLite writers queue on
        # the write lock): content addressing makes it the same pack, so answer with it.
        if address is None:
            raise
        async with req.state.sessions() as session:
            stored = await session.get(EvidencePack, address)
            if stored is None:
                raise
            need = await has_approved_exception(session, me.tenant_id, stored.version_id)
        return json_response(evidence_out(stored, need), 200)


@api.route(
    "GET",
    "/evidence/{digest}",
    summary="One evidence pack by its digest",
    permission="evidence.read",
    tag="evidence",
    response=EvidenceOut,
)
async def get_evidence(req: ApiRequest) -> EvidenceOut:
    me = req.me
    async with req.state.sessions() as session:
        address = req.path("digest")
        pack = (
            None if DIGEST.fullmatch(address) is None else await session.get(EvidencePack, address)
        )
        if pack is None or pack.tenant_id != me.tenant_id:
            raise NotFoundError("no such evidence pack", field="digest")
        need_exceptions = await has_approved_exception(session, me.tenant_id, pack.version_id)
    return evidence_out(pack, need_exceptions)


@api.route(
    "GET",
    "/versions/{version_id}/evidence",
    summary="A version's newest evidence pack and the parts it is missing",
    permission="evidence.read",
    tag="evidence",
    response=VersionEvidence,
)
async def version_evidence(req: ApiRequest) -> VersionEvidence:
    me = req.me
    async with req.state.sessions() as session:
        version, _ = await version_for(session, me, req.path("version_id"))
        need_exceptions = await has_approved_exception(session, me.tenant_id, version.id)
        pack = await newest_pack(session, me.tenant_id, version.id)
    out = None if pack is None else evidence_out(pack, need_exceptions)
    return VersionEvidence(
        version_id=version.id,
        pack=out,
        missing=missing_parts({}, need_exceptions) if out is None else out.missing,
    )
