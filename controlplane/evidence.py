"""Control plane evidence store: immutable, content-addressed evidence packs (seed 002 §9.4).

A pack is the canonical JSON of a version's evidence parts, addressed by its sha256; storing
the same content again finds the same pack. Completeness is judged on the newest pack of a
version, and publishing waits for a complete one.
"""

from __future__ import annotations

from typing import Any, Final

import rfc8785
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.models_release import EvidencePack, RiskException
from controlplane.release import EVIDENCE_PARTS
from controlplane.signing import digest

SCHEMA: Final = "goodbot.evidence/v1"
"""Names the layout of a pack's content, which the digest covers."""

MAX_DEPTH: Final = 32
"""Deepest nesting accepted in a part; canonicalization recurses once per level."""


class EvidenceContentError(ValueError):
    """A part cannot be stored as evidence; ``path`` says where (``parts.sbom.items.3``)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def pack_content(
    application: str, version: str, version_id: str, parts: dict[str, Any]
) -> dict[str, Any]:
    """The stored document of a pack; the version id keeps every version's digests apart."""
    return {
        "schema": SCHEMA,
        "application": application,
        "version": version,
        "version_id": version_id,
        "parts": parts,
    }


def pack_digest(content: dict[str, Any]) -> str:
    """sha256 hex of the RFC 8785 canonical JSON of ``content``.

    Raises:
        EvidenceContentError: The content has a NUL character (PostgreSQL cannot store it),
            nests too deeply, or holds a number outside I-JSON's exact range.
    """
    _check(content, "", 0)
    try:
        return digest(content)
    except rfc8785.CanonicalizationError as exc:
        raise EvidenceContentError(f"not canonicalizable: {exc}", "parts") from None


def _check(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EvidenceContentError(f"nested deeper than {MAX_DEPTH} levels", path)
    if isinstance(value, str):
        if "\x00" in value:
            raise EvidenceContentError("contains a NUL character", path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise EvidenceContentError("a key contains a NUL character", path)
            _check(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}.{index}", depth + 1)


async def has_approved_exception(session: AsyncSession, tenant_id: str, version_id: str) -> bool:
    """Whether any exception of the version was ever approved (expired ones included).

    An exception that was relied on stays part of the record, so the pack must carry it.
    """
    found = await session.execute(
        select(RiskException.id)
        .where(
            RiskException.tenant_id == tenant_id,
            RiskException.version_id == version_id,
            RiskException.state == "approved",
        )
        .limit(1)
    )
    return found.first() is not None


def missing_parts(parts: dict[str, Any], need_exceptions: bool) -> list[str]:
    """Required parts that are absent or empty, in ``EVIDENCE_PARTS`` order.

    Args:
        parts: A pack's parts, name → content object.
        need_exceptions: Whether the version has an approved exception, so that the
            ``exceptions`` part is required too.
    """
    required = (*EVIDENCE_PARTS, "exceptions") if need_exceptions else EVIDENCE_PARTS
    return [name for name in required if not parts.get(name)]


async def newest_pack(
    session: AsyncSession, tenant_id: str, version_id: str
) -> EvidencePack | None:
    """The version's most recently stored pack, if any."""
    return (
        await session.execute(
            select(EvidencePack)
            .where(EvidencePack.tenant_id == tenant_id, EvidencePack.version_id == version_id)
            .order_by(EvidencePack.created_at.desc(), EvidencePack.digest)
            .limit(1)
        )
    ).scalar_one_or_none()


async def evidence_status(
    session: AsyncSession, tenant_id: str, version_id: str
) -> tuple[str | None, list[str]]:
    """The newest pack of a version and what it lacks.

    Args:
        session: A session to read with.
        tenant_id: Tenant the version belongs to.
        version_id: The application version.

    Returns:
        The newest pack's digest (None when there is none) and the names of the required
        parts it is missing; every required part when there is no pack. The pack is complete
        when the list is empty.
    """
    need_exceptions = await has_approved_exception(session, tenant_id, version_id)
    pack = await newest_pack(session, tenant_id, version_id)
    parts: dict[str, Any] = {} if pack is None else pack.content.get("parts", {})
    return (None if pack is None else pack.digest), missing_parts(parts, need_exceptions)
