"""The gateway's built-in tools, each one module over the control plane (agent → tools →
control plane).

``default_registry()`` offers them all; the composition root hands it to the route and the
executor. Names people use (apps, versions, scopes, devices) are resolved in
``tools.builtin.resolve``; replies are rendered with ``tools.builtin.render``.
"""

from __future__ import annotations

from tools.builtin.decide_approval import decide_approval
from tools.builtin.device_compliance import device_compliance
from tools.builtin.explain_risk import explain_risk
from tools.builtin.pause_rollout import pause_rollout
from tools.builtin.pending_approvals import pending_approvals
from tools.builtin.promote_rollout import promote_rollout
from tools.builtin.recent_events import recent_events
from tools.builtin.resume_rollout import resume_rollout
from tools.builtin.rollback_rollout import rollback_rollout
from tools.builtin.rollout_status import rollout_status
from tools.builtin.scope_drift import scope_drift
from tools.registry import Registry


def default_registry() -> Registry:
    """A registry holding every built-in tool (a new one per call; the tools are shared)."""
    return Registry(
        [
            pending_approvals,
            decide_approval,
            device_compliance,
            scope_drift,
            rollout_status,
            promote_rollout,
            pause_rollout,
            resume_rollout,
            rollback_rollout,
            explain_risk,
            recent_events,
        ]
    )


__all__ = [
    "decide_approval",
    "default_registry",
    "device_compliance",
    "explain_risk",
    "pause_rollout",
    "pending_approvals",
    "promote_rollout",
    "recent_events",
    "resume_rollout",
    "rollback_rollout",
    "rollout_status",
    "scope_drift",
]
