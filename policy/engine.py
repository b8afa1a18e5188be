"""Policy decisions: who is speaking, and may they use this action here — deny by default.

Every check returns a frozen ``Decision`` with the reason and the deciding rule; falling
through every rule is a denial (``default:deny``). Only the enforcement point raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policy.model import MUTATING_ACTIONS, Channel, Grant, PolicyFile


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one policy check."""

    allowed: bool
    """Whether the action may proceed."""
    reason: str
    """A sentence for the person and the audit record."""
    rule: str
    """The deciding rule, such as ``roles.operator.grants[1]`` or ``default:deny``."""


@dataclass(frozen=True, slots=True)
class PrincipalRef:
    """A resolved principal: who goodbot acts for."""

    name: str
    """Key of the principal in the policy file."""
    roles: tuple[str, ...]
    """Its roles."""
    control_plane_principal: str
    """The name asserted to the control plane."""


@dataclass(frozen=True)
class Policy:
    """A validated policy document, compiled for fast lookups."""

    source: PolicyFile
    revision: str
    """Digest of the file it came from, recorded with every decision."""

    def __post_init__(self) -> None:
        index = {
            (identity.channel, identity.id): name
            for name, principal in self.source.principals.items()
            for identity in principal.identities
        }
        object.__setattr__(self, "_identities", index)

    def resolve(self, channel: Channel, identity: str) -> PrincipalRef | None:
        """The principal owning an immutable identity on a channel, or None (unknown sender)."""
        index: dict[tuple[str, str], str] = self._identities  # type: ignore[attr-defined]
        if channel == "email" and identity.startswith("@"):
            return None  # a domain entry is not an address anyone sends from
        name = index.get((channel, identity))
        if name is None and channel == "email" and "@" in identity:
            # A domain listed as "@example.com" stands for each of its addresses not listed.
            name = index.get((channel, "@" + identity.rpartition("@")[2]))
        return None if name is None else self.principal(name)

    def principal(self, name: str) -> PrincipalRef | None:
        """A principal by its policy name."""
        principal = self.source.principals.get(name)
        if principal is None:
            return None
        return PrincipalRef(name, tuple(principal.roles), principal.control_plane_principal or name)

    def channel_open(self, channel: Channel) -> Decision:
        """Whether a channel is enabled (a channel the file does not list is not)."""
        settings = self.source.channels.get(channel)
        if settings is None:
            return Decision(False, f"the {channel} channel is not enabled", "default:deny")
        if not settings.enabled:
            return Decision(False, f"the {channel} channel is disabled", f"channels.{channel}")
        return Decision(True, f"the {channel} channel is enabled", f"channels.{channel}")

    def max_message_bytes(self, channel: Channel) -> int:
        """The size limit for a message on this channel."""
        settings = self.source.channels.get(channel)
        if settings is not None and settings.max_message_bytes is not None:
            return settings.max_message_bytes
        return self.source.defaults.max_message_bytes

    def rate_per_minute(self, principal: str) -> int:
        """Messages per minute this principal may send."""
        own = self.source.principals[principal].rate_limit_per_minute
        return own if own is not None else self.source.defaults.rate_limit_per_minute

    def decide(
        self,
        principal: PrincipalRef | None,
        action: str,
        channel: Channel,
        scope_path: Sequence[str] = (),
    ) -> Decision:
        """May ``principal`` use ``action`` on ``channel`` for a target on ``scope_path``?

        Args:
            principal: The resolved principal; None (an unknown sender) is always denied.
            action: Dotted policy action such as ``ring.promote``.
            channel: Where the request came from.
            scope_path: Control-plane scope ids from the organization down to the target's
                scope, when the target is known; grants narrowed to scopes need it.
        """
        if principal is None:
            return Decision(False, "the sender is not a known principal", "default:unknown-sender")
        opened = self.channel_open(channel)
        if not opened.allowed:
            return opened
        settings = self.source.channels[channel]
        if settings.read_only and action in MUTATING_ACTIONS:
            return Decision(
                False,
                f"{action} changes something and the {channel} channel is read-only",
                f"channels.{channel}.read_only",
            )
        narrowed: list[str] = []
        for role in principal.roles:
            for n, raw in enumerate(self.source.roles[role].grants):
                grant = raw if isinstance(raw, Grant) else Grant(action=raw)
                if grant.action != action:
                    continue
                rule = f"roles.{role}.grants[{n}]"
                if grant.channels is not None and channel not in grant.channels:
                    narrowed.append(f"{rule} only on {', '.join(grant.channels)}")
                    continue
                if grant.scopes is not None and not set(grant.scopes) & set(scope_path):
                    narrowed.append(f"{rule} only inside scopes {', '.join(grant.scopes)}")
                    continue
                return Decision(True, f"role {role} grants {action}", rule)
        if narrowed:
            return Decision(
                False, f"{action} is granted, but not here: " + "; ".join(narrowed), "default:deny"
            )
        return Decision(
            False, f"none of the roles {list(principal.roles)} grants {action}", "default:deny"
        )

    def decide_any_target(
        self, principal: PrincipalRef | None, action: str, channel: Channel
    ) -> Decision:
        """May ``principal`` use ``action`` here for some target? (Before the target is known.)

        A grant narrowed to scopes allows here, with its scopes named; the target's own check
        (``decide`` with its scope path) follows once the target is known.
        """
        if principal is None:
            return self.decide(principal, action, channel)
        for role in principal.roles:
            for raw in self.source.roles[role].grants:
                grant = raw if isinstance(raw, Grant) else Grant(action=raw)
                if grant.action != action:
                    continue
                decided = self.decide(principal, action, channel, tuple(grant.scopes or ()))
                if decided.allowed:
                    where = f" inside scopes {', '.join(grant.scopes)}" if grant.scopes else ""
                    return Decision(True, f"role {role} grants {action}{where}", decided.rule)
        return self.decide(principal, action, channel)

    def granted_actions(self, principal: PrincipalRef, channel: Channel) -> set[str]:
        """Actions the principal may use on this channel for some target (tools to offer)."""
        out: set[str] = set()
        for role in principal.roles:
            for raw in self.source.roles[role].grants:
                grant = raw if isinstance(raw, Grant) else Grant(action=raw)
                decided = self.decide(principal, grant.action, channel, tuple(grant.scopes or ()))
                if decided.allowed:
                    out.add(grant.action)
        return out
