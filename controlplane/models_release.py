"""Control plane storage, part II: catalog, supply chain, risk, intents, rollouts, approvals.

Tables for seed 002 §5-10: what is released (application, version, artifact), what it is
allowed to do (risk assessment, exception, approval, evidence pack) and how it goes out
(deployment intent, rollout, device install, connector task, incident).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.models import Base, JsonType, UtcDateTime, utcnow


class Application(Base):
    __tablename__ = "applications"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    """Canonical identity, such as ``firefox``."""
    owner: Mapped[str] = mapped_column(String(200))
    """Accountable principal name."""
    category: Mapped[str] = mapped_column(String(60))
    support_tier: Mapped[str] = mapped_column(String(20))
    allowed_scope_ids: Mapped[list[str]] = mapped_column(JsonType)
    """Scopes the application may be deployed into (targets must lie inside one of them)."""
    privileged: Mapped[bool] = mapped_column(Boolean, default=False)
    """Privileged tooling: CAB approval always required, whatever the risk score."""
    description: Mapped[str] = mapped_column(Text, default="")
    """Free text; data, never instructions."""
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AppVersion(Base):
    __tablename__ = "app_versions"
    __table_args__ = (UniqueConstraint("application_id", "version"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id"))
    version: Mapped[str] = mapped_column(String(100))
    """Semantic version."""
    state: Mapped[str] = mapped_column(String(20), default="requested")
    """requested > packaged > staged > approved > published > retired."""
    supported_os: Mapped[list[str]] = mapped_column(JsonType)
    dependencies: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    release_notes: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("app_versions.id"), index=True)
    platform: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    signing: Mapped[dict[str, Any]] = mapped_column(JsonType)
    """Signer, certificate thumbprint, notarization, signature validity."""
    sbom_ref: Mapped[str | None] = mapped_column(String(500), nullable=True)
    scan_result: Mapped[str] = mapped_column(String(20))
    """pass, fail or exception (as the scanner reported it)."""
    findings: Mapped[dict[str, int]] = mapped_column(JsonType)
    """Counts by severity: critical, high, medium, low."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class RiskAssessment(Base):
    __tablename__ = "risk_assessments"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("app_versions.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(20))
    inputs: Mapped[dict[str, Any]] = mapped_column(JsonType)
    factors: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    """Per factor: name, weight, normalized value, contribution, explanation."""
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    requires_cab: Mapped[bool] = mapped_column(Boolean)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class RiskException(Base):
    """A controlled exception (seed 002 §9.5), e.g. publishing despite a failed scan."""

    __tablename__ = "risk_exceptions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("app_versions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text)
    compensating_controls: Mapped[list[str]] = mapped_column(JsonType)
    owner: Mapped[str] = mapped_column(String(200))
    """Named accountable owner."""
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(20), default="requested")
    """requested, approved, denied."""
    requested_by: Mapped[str] = mapped_column(String(200))
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    intent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """Audit link to the deployment intent it was used for."""
    expiry_notified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class EvidencePack(Base):
    """Immutable, content-addressed evidence (seed 002 §9.4)."""

    __tablename__ = "evidence_packs"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    """sha256 of the canonical JSON content."""
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("app_versions.id"), index=True)
    content: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeploymentIntent(Base):
    __tablename__ = "deployment_intents"
    __table_args__ = (
        UniqueConstraint("tenant_id", "client_key"),
        Index("ix_intents_active", "tenant_id", "application_id", "ring", "state"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    client_key: Mapped[str] = mapped_column(String(200))
    """Idempotency key chosen by the client; a replay returns the same intent."""
    request_digest: Mapped[str] = mapped_column(String(64))
    """sha256 of the canonical request, to tell a replay from a conflicting reuse of a key."""
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id"))
    version_id: Mapped[str] = mapped_column(ForeignKey("app_versions.id"))
    target_scope_id: Mapped[str] = mapped_column(ForeignKey("scopes.id"))
    ring: Mapped[int] = mapped_column(Integer)
    """Ring the intent is in now (0 lab … 4 global)."""
    schedule: Mapped[dict[str, Any]] = mapped_column(JsonType)
    constraints: Mapped[dict[str, Any]] = mapped_column(JsonType)
    state: Mapped[str] = mapped_column(String(20), default="active")
    """active, paused, completed, rolled_back, cancelled (active and paused are 'in flight')."""
    evidence_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    """Rollout notes; free text, data, never instructions."""
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Rollout(Base):
    """The live state of an intent's ring progression."""

    __tablename__ = "rollouts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    intent_id: Mapped[str] = mapped_column(ForeignKey("deployment_intents.id"), unique=True)
    ring: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="Progressing")
    """Healthy, Progressing, Paused or Degraded."""
    paused_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    ring_started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_gates: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    """The last gate evaluation: gate, measured, threshold, verdict."""
    history: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    """Promotions, pauses, resumes and rollbacks, with actor and time."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeviceInstall(Base):
    """One device's install of an intent's version, as the execution plane reports it."""

    __tablename__ = "device_installs"
    __table_args__ = (Index("ix_installs_ring", "intent_id", "ring", "status"),)
    intent_id: Mapped[str] = mapped_column(ForeignKey("deployment_intents.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    ring: Mapped[int] = mapped_column(Integer)
    site_class: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    """pending, succeeded, failed, rolled_back."""
    assigned_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reported_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    """Version the device had before this install succeeded (None: the package was absent);
    a rollback restores it."""


class Approval(Base):
    """A CAB (or security) approval request and its decision (seed 002 §5.3, §9.3)."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_pending", "tenant_id", "decision"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    subject_type: Mapped[str] = mapped_column(String(20))
    """intent or exception."""
    subject_id: Mapped[str] = mapped_column(String(40))
    required_role: Mapped[str] = mapped_column(String(40))
    """cab_approver for intents, security_reviewer for exceptions."""
    reason: Mapped[str] = mapped_column(String(500))
    """Why approval is needed (risk score over threshold, privileged tooling, …)."""
    requested_by: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(20), default="pending")
    """pending, approved, denied, expired."""
    approver: Mapped[str | None] = mapped_column(String(200), nullable=True)
    conditions: Mapped[list[str]] = mapped_column(JsonType, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """An approval stops counting at this time."""
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Incident(Base):
    __tablename__ = "incidents"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id"))
    title: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(20), default="open")
    opened_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ConnectorTask(Base):
    """One call to an execution plane, idempotent by key and retried when transient."""

    __tablename__ = "connector_tasks"
    __table_args__ = (Index("ix_connector_due", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    connector: Mapped[str] = mapped_column(String(40))
    operation: Mapped[str] = mapped_column(String(20))
    """publish, query, remediate, correlate."""
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    intent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    """pending, done, failed."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_class: Mapped[str | None] = mapped_column(String(20), nullable=True)
    """transient, permanent, policy_violation."""
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
