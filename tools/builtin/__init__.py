"""The gateway's built-in tools, each one module over the control plane (agent → tools →
control plane).

``default_registry()`` offers them all; the composition root hands it to the route and the
executor. Names people use (apps, versions, scopes, devices) are resolved in
``tools.builtin.resolve``; replies are rendered with ``tools.builtin.render``.
"""

from __future__ import annotations

from tools.builtin.book_meeting import book_meeting
from tools.builtin.decide_approval import decide_approval
from tools.builtin.device_compliance import device_compliance
from tools.builtin.explain_risk import explain_risk
from tools.builtin.find_availability import find_availability
from tools.builtin.list_cab_meetings import list_cab_meetings
from tools.builtin.pause_rollout import pause_rollout
from tools.builtin.pending_approvals import pending_approvals
from tools.builtin.promote_rollout import promote_rollout
from tools.builtin.propose_slots import propose_slots
from tools.builtin.recent_events import recent_events
from tools.builtin.resume_rollout import resume_rollout
from tools.builtin.rollback_rollout import rollback_rollout
from tools.builtin.rollout_status import rollout_status
from tools.builtin.scope_drift import scope_drift
from tools.registry import Registry, ToolSpec


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


def graph_tools() -> list[ToolSpec]:
    """The calendar tools, offered only when Microsoft Graph is configured."""
    return [find_availability, propose_slots, book_meeting, list_cab_meetings]


__all__ = [
    "book_meeting",
    "decide_approval",
    "default_registry",
    "device_compliance",
    "explain_risk",
    "find_availability",
    "graph_tools",
    "list_cab_meetings",
    "pause_rollout",
    "pending_approvals",
    "promote_rollout",
    "propose_slots",
    "recent_events",
    "resume_rollout",
    "rollback_rollout",
    "rollout_status",
    "scope_drift",
]
