"""Policy guard: the policy layer lent to the tools for one principal on one channel (policy).

The tool executor asks it before every call and again once the target's scope is known; it
never raises, it decides (``Decision``), and it masks secrets in whatever reaches the audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policy.engine import Decision, Policy, PrincipalRef
from policy.model import Channel
from policy.redact import redact


@dataclass(frozen=True, slots=True)
class PolicyGuard:
    """Authorization and redaction for ``principal`` on ``channel`` under ``policy``."""

    policy: Policy
    """The policy in force when the turn started (a reload mid-turn does not change it)."""
    principal: PrincipalRef
    channel: Channel

    def authorize(self, action: str, scope_path: Sequence[str] | None) -> Decision:
        """Decide ``action`` for a target in ``scope_path``; None: for some target."""
        if scope_path is None:
            return self.policy.decide_any_target(self.principal, action, self.channel)
        return self.policy.decide(self.principal, action, self.channel, tuple(scope_path))

    def redact(self, text: str) -> str:
        """``text`` with secrets masked."""
        return redact(text).text
