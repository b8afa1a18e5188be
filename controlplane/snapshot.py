"""Control plane snapshots: a device's signed offline policy, issued here and checked by agents.

Seed 000 §5 and §9, seed 001 §11: an endpoint stores the last valid signed snapshot and
enforces from it while the control plane is out of reach. ``issue_snapshot`` signs one;
``verify_snapshot`` is what the endpoint agent (and the enforcement API, when an endpoint
presents its snapshot) runs: signature through ``signing.verify_document`` only, then device,
tenant and lifetime.

Errors::

    ValueError
    └── SnapshotError    bad envelope or signature, another device's, expired, not yet valid
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from controlplane.effective import EffectivePolicy
from controlplane.signing import ALGORITHM, Signer, verify_document

CLOCK_SKEW: Final = timedelta(minutes=5)
"""How far in the future ``issued_at`` may lie before a snapshot is refused (clock drift)."""


class SnapshotError(ValueError):
    """A snapshot that must not be enforced from; the message says why."""


def issue_snapshot(
    signer: Signer,
    *,
    device_id: str,
    tenant_id: str,
    policy: EffectivePolicy,
    now: datetime,
    ttl: timedelta,
) -> dict[str, Any]:
    """Sign a device's effective policy as an offline snapshot.

    Args:
        signer: the control plane's own key.
        device_id: the device the snapshot is bound to.
        tenant_id: the device's tenant.
        policy: the device's effective policy.
        now: issue time, timezone-aware.
        ttl: lifetime (``settings.snapshot_ttl``).

    Returns:
        The envelope ``{"document", "signature": {"alg", "key_id", "value"}}``.
    """
    document = {
        "device_id": device_id,
        "tenant_id": tenant_id,
        "issued_at": now.isoformat(),
        "expires_at": (now + ttl).isoformat(),
        "policy": policy.as_document(),
    }
    return {
        "document": document,
        "signature": {"alg": ALGORITHM, "key_id": signer.key_id, "value": signer.sign(document)},
    }


def verify_snapshot(
    envelope: Mapping[str, Any],
    keys: dict[str, str],
    now: datetime,
    *,
    device_id: str,
    tenant_id: str | None = None,
) -> EffectivePolicy:
    """Check a snapshot and return the policy it carries.

    Args:
        envelope: the snapshot as ``GET /api/v1/devices/{id}/policy-snapshot`` served it.
        keys: trusted key id → base64url public key. Pass only the control plane's own key:
            a policy author's key may sign bundles, not snapshots.
        now: the current time, timezone-aware.
        device_id: the device enforcing; a snapshot issued to another device is refused.
        tenant_id: the device's tenant, when known; checked too.

    Returns:
        The effective policy to enforce from.

    Raises:
        SnapshotError: the envelope is malformed, its signature does not verify with ``keys``,
            or it belongs to another device or tenant, has expired or is not yet valid.
    """
    try:
        document = verify_document(dict(envelope), keys)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot signature: {exc}") from None
    check_validity(document, now, device_id=device_id, tenant_id=tenant_id)
    try:
        return EffectivePolicy.from_document(document["policy"])
    except (AttributeError, KeyError, TypeError, ValueError, ValidationError):
        raise SnapshotError("snapshot policy is malformed") from None


def check_validity(
    document: Mapping[str, Any], now: datetime, *, device_id: str, tenant_id: str | None = None
) -> None:
    """Check a verified snapshot document's binding and lifetime (not its signature).

    Split from ``verify_snapshot`` so a holder of an already verified document (the
    enforcement API's cache) can re-check what changes with time and with the asker.

    Raises:
        SnapshotError: another device's or tenant's, expired, not yet valid, or malformed.
    """
    try:
        issued_at = datetime.fromisoformat(document["issued_at"])
        expires_at = datetime.fromisoformat(document["expires_at"])
        owner, tenant = document["device_id"], document["tenant_id"]
    except (KeyError, TypeError, ValueError):
        raise SnapshotError("snapshot document is malformed") from None
    if issued_at.tzinfo is None or expires_at.tzinfo is None:
        raise SnapshotError("snapshot times carry no time zone")
    if owner != device_id:
        raise SnapshotError(f"snapshot was issued to device {owner!r}, not {device_id!r}")
    if tenant_id is not None and tenant != tenant_id:
        raise SnapshotError("snapshot was issued in another tenant")
    if now >= expires_at:
        raise SnapshotError(f"snapshot expired at {expires_at.isoformat()}")
    if issued_at > now + CLOCK_SKEW:
        raise SnapshotError(f"snapshot is issued in the future ({issued_at.isoformat()})")
