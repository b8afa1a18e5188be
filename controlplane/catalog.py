"""Control plane catalog rules: version lifecycle, the supply-chain gate and risk exceptions.

What the catalog API and the rollout orchestrator ask before a version moves on (seed 002
§5.1, §7.1, §9.5). Nothing here speaks HTTP: each check returns a value with its reason, and
the API modules decide what to refuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import ROLE_PERMISSIONS, Decision
from controlplane.events import NewEvent, append_events
from controlplane.models import Principal, Scope, utcnow
from controlplane.models_release import Application, AppVersion, Artifact, RiskException
from controlplane.release import TRANSITIONS

SEMVER: Final = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
"""Semantic Versioning 2.0.0, the regular expression semver.org publishes (ASCII digits only)."""

TRANSITION_PERMISSIONS: Final[dict[str, str]] = {
    "packaged": "catalog.write",
    "staged": "catalog.write",
    "approved": "approval.decide",
    "published": "intent.write",
    "retired": "catalog.write",
}
"""Target state → permission needed to move a version there.

Seed 002 §5.5 and §12: packaging builds and stages but never publishes, CAB approves and a
publisher publishes, so the three duties need three different roles.
"""

EXCEPTION_MAX_DAYS: Final = 90
"""Longest an exception may run; a longer waiver is a policy change, not an exception."""


@dataclass(frozen=True, slots=True)
class GateCheck:
    """The supply-chain gate's verdict on one application version (seed 002 §7.1)."""

    ok: bool
    """Whether the version may be published or rolled out."""
    reason: str
    """A sentence a person can read, naming the artifacts or the exception that decided."""
    exception_id: str | None
    """The approved exception that let a failed scan through; None when the scans passed."""


def is_semver(text: str) -> bool:
    """Whether ``text`` is a semantic version such as ``1.2.3`` or ``2.0.0-rc.1+build.5``."""
    return SEMVER.fullmatch(text) is not None


def transition_allowed(current: str, target: str) -> Decision:
    """Whether a version in state ``current`` may move to ``target`` (``release.TRANSITIONS``)."""
    allowed = TRANSITIONS.get(current, ())
    if target in allowed:
        return Decision(True, f"{current} may move to {target}", f"transition:{current}")
    listed = ", ".join(allowed) if allowed else "nothing (it is final)"
    return Decision(
        False,
        f"a {current} version cannot become {target}; from {current} it may move to {listed}",
        f"transition:{current}",
    )


def covers(scope_path: str, app_scope_paths: Sequence[str | None]) -> Decision:
    """Whether a subtree holds every scope an application may go to (seed 002 §5.4.1).

    Args:
        scope_path: Materialized path of the principal's scope.
        app_scope_paths: Paths of the application's allowed scopes; None for one not found.
    """
    if all(p is not None and p.startswith(scope_path) for p in app_scope_paths):
        return Decision(True, "the application's scopes are inside the caller's subtree", "scope")
    return Decision(
        False,
        "the application may go to scopes outside the caller's subtree; a principal scoped "
        "higher must change it",
        "default:deny",
    )


async def scope_paths(
    session: AsyncSession, tenant_id: str, scope_ids: Iterable[str]
) -> dict[str, str]:
    """Scope id → materialized path for the given scopes of a tenant."""
    rows = await session.execute(
        select(Scope.id, Scope.path).where(Scope.tenant_id == tenant_id, Scope.id.in_(scope_ids))
    )
    return {scope_id: path for scope_id, path in rows}


def scan_passed(artifact: Artifact) -> bool:
    """Whether an artifact's scan counts as a pass: reported ``pass`` with no critical or high."""
    findings = artifact.findings
    return (
        artifact.scan_result == "pass"
        and not findings.get("critical", 0)
        and not findings.get("high", 0)
    )


def current_artifacts(artifacts: Iterable[Artifact]) -> list[Artifact]:
    """The newest record per (platform, sha256): a rescan of the same binary replaces the old.

    Args:
        artifacts: Records of one version, in any order.
    """
    newest: dict[tuple[str, str], Artifact] = {}
    for artifact in sorted(artifacts, key=lambda a: (a.created_at, a.id)):
        newest[(artifact.platform, artifact.sha256)] = artifact
    return sorted(newest.values(), key=lambda a: (a.platform, a.sha256))


async def active_exception(
    session: AsyncSession, tenant_id: str, version_id: str, now: datetime
) -> RiskException | None:
    """The approved, unexpired vulnerability exception of a version that lasts longest."""
    return (
        await session.execute(
            select(RiskException)
            .where(
                RiskException.tenant_id == tenant_id,
                RiskException.version_id == version_id,
                RiskException.kind == "vulnerability",
                RiskException.state == "approved",
                RiskException.expires_at > now,
            )
            .order_by(RiskException.expires_at.desc(), RiskException.id)
            .limit(1)
        )
    ).scalar_one_or_none()


async def supply_chain_gate(
    session: AsyncSession, tenant_id: str, version_id: str, now: datetime
) -> GateCheck:
    """Check ``scan_pass OR approved_exception`` for a version (seed 002 §7.1).

    The version needs at least one artifact; an exception waives failed scans, never a missing
    artifact (there would be nothing to publish). Of several records for the same platform and
    sha256 the newest counts, so a rescan can clear a false positive.

    Args:
        session: A session to read with.
        tenant_id: Tenant the version belongs to; other tenants' rows are never read.
        version_id: The application version.
        now: The moment to judge exception expiry at (timezone-aware).

    Returns:
        The verdict with its reason and, when an exception decided, its id.
    """
    rows = (
        await session.execute(
            select(Artifact).where(
                Artifact.tenant_id == tenant_id, Artifact.version_id == version_id
            )
        )
    ).scalars()
    artifacts = current_artifacts(rows)
    if not artifacts:
        return GateCheck(False, "no artifact is registered for this version", None)
    failed = [a for a in artifacts if not scan_passed(a)]
    if not failed:
        return GateCheck(True, f"all {len(artifacts)} artifact scans passed", None)
    summary = "; ".join(_describe(a) for a in failed)
    waiver = await active_exception(session, tenant_id, version_id, now)
    if waiver is None:
        return GateCheck(
            False,
            f"{len(failed)} of {len(artifacts)} artifact scans did not pass ({summary}) and no "
            "approved, unexpired vulnerability exception covers the version",
            None,
        )
    return GateCheck(
        True,
        f"{len(failed)} of {len(artifacts)} artifact scans did not pass ({summary}); exception "
        f"{waiver.id} approved by {waiver.decided_by} covers them until "
        f"{waiver.expires_at.isoformat()}",
        waiver.id,
    )


def _describe(artifact: Artifact) -> str:
    f = artifact.findings
    return (
        f"{artifact.platform} {artifact.sha256[:12]}: {artifact.scan_result}, "
        f"{f.get('critical', 0)} critical, {f.get('high', 0)} high"
    )


def may_decide(roles: Sequence[str], principal_name: str, exception: RiskException) -> Decision:
    """Whether a principal may approve or deny an exception (seed 002 §7.1, §14.1).

    The decider needs ``exception.decide`` (the security reviewer's permission) and must not be
    the requester: separation of duties holds whatever else the principal's roles grant.
    """
    if not any("exception.decide" in ROLE_PERMISSIONS.get(r, frozenset()) for r in roles):
        return Decision(
            False,
            f"none of the roles {list(roles)} grants exception.decide (a security reviewer's)",
            "default:deny",
        )
    if exception.requested_by == principal_name:
        return Decision(
            False,
            f"separation of duties: {principal_name} requested this exception and cannot decide "
            "it; another security reviewer must",
            "sod:requester",
        )
    return Decision(True, "a security reviewer other than the requester", "sod:other")


async def pending_exceptions_for(
    session: AsyncSession, tenant_id: str, principal_name: str, roles: tuple[str, ...]
) -> list[RiskException]:
    """Requested exceptions this principal may decide, oldest first ("what is pending for me").

    Left out: requests already past their expiry (approving them is refused) and those of
    applications reaching beyond the principal's scope subtree (deciding them is refused).

    Args:
        session: A session to read with.
        tenant_id: The principal's tenant.
        principal_name: The principal's unique name (requests they made are not theirs to decide).
        roles: The principal's roles.
    """
    if not any("exception.decide" in ROLE_PERMISSIONS.get(r, frozenset()) for r in roles):
        return []
    home = (
        await session.execute(
            select(Scope.path)
            .join(Principal, Principal.scope_id == Scope.id)
            .where(Principal.tenant_id == tenant_id, Principal.name == principal_name)
        )
    ).scalar_one_or_none()
    if home is None:
        return []
    rows = (
        await session.execute(
            select(RiskException, Application.allowed_scope_ids)
            .join(AppVersion, AppVersion.id == RiskException.version_id)
            .join(Application, Application.id == AppVersion.application_id)
            .where(
                RiskException.tenant_id == tenant_id,
                RiskException.state == "requested",
                RiskException.requested_by != principal_name,
                RiskException.expires_at > utcnow(),
            )
            .order_by(RiskException.created_at, RiskException.id)
        )
    ).all()
    # Deciding needs the application's scopes inside the reviewer's subtree, as the API checks.
    paths = await scope_paths(session, tenant_id, {s for _, allowed in rows for s in allowed})
    return [
        exception
        for exception, allowed in rows
        if covers(home, [paths.get(s) for s in allowed]).allowed
    ]


async def flag_expiring_exceptions(
    session: AsyncSession, tenant_id: str, now: datetime, within: timedelta
) -> int:
    """Append one ``exception_expiring`` event per approved exception about to lapse.

    Covers exceptions expiring within ``within`` of ``now`` and those already expired, each once:
    the flag is set with a conditional UPDATE, so two sweepers running at once never announce
    the same exception twice.

    Args:
        session: A session inside a write transaction that the caller commits.
        tenant_id: Whose exceptions.
        now: The sweep's time (timezone-aware).
        within: How far ahead to warn.

    Returns:
        How many exceptions were flagged.
    """
    flagged = (
        await session.execute(
            update(RiskException)
            .where(
                RiskException.tenant_id == tenant_id,
                RiskException.state == "approved",
                RiskException.expiry_notified.is_(False),
                RiskException.expires_at <= now + within,
            )
            .values(expiry_notified=True)
            .returning(
                RiskException.id,
                RiskException.version_id,
                RiskException.owner,
                RiskException.expires_at,
            )
            .execution_options(synchronize_session=False)
        )
    ).all()
    events = [
        NewEvent(
            type="exception_expiring",
            action="exception.expiry",
            outcome="expired" if row.expires_at <= now else "expiring",
            actor="control-plane",
            correlation_id=f"exception-sweep:{now.isoformat()}",
            data={
                "exception_id": row.id,
                "version_id": row.version_id,
                "owner": row.owner,
                "expires_at": row.expires_at.isoformat(),
            },
        )
        for row in sorted(flagged, key=lambda r: (r.expires_at, r.id))
    ]
    await append_events(session, tenant_id, events)
    return len(events)
