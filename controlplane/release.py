"""Control plane release vocabulary shared by catalog, risk, approvals and rollouts (seed 002)."""

from __future__ import annotations

from typing import Final

RINGS: Final = {0: "lab", 1: "canary", 2: "pilot", 3: "department", 4: "global"}
"""Ring number → name (seed 002 §10.1)."""

LIFECYCLE: Final = ("requested", "packaged", "staged", "approved", "published", "retired")
"""Application version states, in order (seed 002 §5.1)."""

TRANSITIONS: Final[dict[str, tuple[str, ...]]] = {
    "requested": ("packaged", "retired"),
    "packaged": ("staged", "retired"),
    "staged": ("approved", "packaged", "retired"),
    "approved": ("published", "retired"),
    "published": ("retired",),
    "retired": (),
}
"""Allowed next states; anything else is a 409 that lists these."""

EVIDENCE_PARTS: Final = (
    "artifact_hashes",
    "signatures",
    "sbom",
    "scan_report",
    "install_notes",
    "uninstall_notes",
    "detection_notes",
    "rollout_plan",
    "rollback_plan",
    "test_evidence",
)
"""Parts every evidence pack must have (seed 002 §9.4); ``exceptions`` is added when any apply."""

IN_FLIGHT: Final = ("active", "paused")
"""Deployment intent states that count as the one active change per application and ring."""
