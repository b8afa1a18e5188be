"""Channel contract: what every channel hands the gateway and what it gets back (channels).

A channel verifies its sender (a token, a JWT, a signature, DKIM/DMARC), translates the
delivery into one ``InboundMessage`` with an immutable identity, and talks to the gateway only
through the ``Turns`` protocol: ``admit`` (which refuses with ``RefusedError`` before anything is
stored), then ``run`` (the turn, reporting progress events), and ``decide`` for confirmation
buttons and prompts. The gateway's composition root supplies the implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sessions.results import Outcome

Emit = Callable[[dict[str, Any]], Awaitable[None]]
"""Receives a turn's progress events (``tool_call``, ``tool_result``, ``confirmation``)."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One verified delivery from a channel."""

    channel: str
    """``cli``, ``teams``, ``slack``, ``email`` or ``mcp``."""
    identity: str
    """The sender's immutable id on the channel (never a display name)."""
    event_id: str
    """The channel's id for the delivery, stable across its retries (de-duplication)."""
    conversation_key: str
    """The channel's key for the conversation."""
    text: str
    """What the person wrote."""
    channel_message_id: str | None = None
    """The channel's id for the message, if it has one."""


@dataclass(frozen=True, slots=True)
class Sender:
    """A resolved principal, as a channel may show it."""

    principal: str
    """The policy's name for the principal."""
    roles: tuple[str, ...]
    """Its roles."""


@dataclass(frozen=True, slots=True)
class Admission:
    """A message stored durably and ready to run."""

    message: InboundMessage
    sender: Sender
    message_id: int
    """The stored inbound message."""
    conversation_id: str
    """The gateway's conversation id."""
    duplicate: bool
    """The channel delivered this event before: the turn is not run again."""
    notifications: tuple[dict[str, Any], ...] = ()
    """Notifications waiting for the sender on this channel (shown before the turn)."""


@dataclass(frozen=True, slots=True)
class TurnReport:
    """What a turn produced, for the channel to render."""

    reply: str
    """The reply text (Markdown, already redacted)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Each call: ``call_id``, ``name``, ``arguments``, ``status``, ``text``."""
    confirmation: dict[str, Any] | None = None
    """The confirmation proposed or decided in the turn (see ``agent.turn.confirmation_event``)."""
    message_id: int = 0
    conversation_id: str = ""

    def as_json(self) -> dict[str, Any]:
        """The report as the ``done`` event's ``result``."""
        return {
            "reply": self.reply,
            "tool_calls": self.tool_calls,
            "confirmation": self.confirmation,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
        }


@dataclass(frozen=True, slots=True)
class DecisionReport:
    """What a confirm or deny did."""

    outcome: Outcome
    reason: str
    """The outcome as a sentence."""
    confirmation: dict[str, Any] | None
    """The confirmation as it now stands (None when unknown or someone else's)."""
    result: dict[str, Any] | None
    """The execution's ``status``, ``text`` and ``data`` when it ran."""
    reply: str
    """What to tell the person."""


class RefusedError(Exception):
    """A message or request refused before anything was stored.

    Attributes:
        status: The HTTP status a channel with HTTP semantics answers (401, 403, 413, 429…).
        code: A short machine-readable code (``unauthorized``, ``denied``, ``too_large``…).
        message: A sentence for the person; it names the limit or the rule.
        retry_after: Seconds to wait, for a rate limit.
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Turns(Protocol):
    """The gateway as a channel sees it."""

    def sender(self, channel: str, identity: str) -> Sender | None:
        """The principal owning ``identity`` on ``channel``, or None (unknown sender)."""
        ...

    def sign_in_wait(self, channel: str, source: str) -> int:
        """Seconds ``source`` (a client address) must wait after too many failed sign-ins."""
        ...

    async def sign_in_failed(
        self, channel: str, source: str, reason: str, *, block: bool = True
    ) -> None:
        """Count (and audit, bounded) a failed sign-in from ``source``; ``block`` False for a
        channel that never refuses by address (only counted and audited)."""
        ...

    async def admit(self, message: InboundMessage) -> Admission:
        """Check and store a message; raise ``RefusedError`` with nothing stored."""
        ...

    async def run(self, admission: Admission, emit: Emit) -> TurnReport:
        """Run the admitted message's turn (in order within its conversation)."""
        ...

    async def refuse(
        self, message: InboundMessage, rule: str, reason: str, *, verified: bool = False
    ) -> None:
        """Audit a delivery the channel refused itself, before ``admit`` (metadata only); the
        sender is attributed to a principal only when ``verified``."""
        ...

    async def decide(
        self,
        channel: str,
        identity: str,
        confirmation_id: str,
        decision: Literal["confirm", "deny"],
        arguments_hash: str | None = None,
    ) -> DecisionReport:
        """Confirm or deny a confirmation for the sender; run it once if confirmed."""
        ...

    async def pending_confirmations(self, sender: Sender) -> list[dict[str, Any]]:
        """The sender's confirmations waiting for a decision."""
        ...

    async def take_notifications(self, sender: Sender, channel: str) -> list[dict[str, Any]]:
        """Notifications waiting for the sender on ``channel``, marked delivered."""
        ...

    def whoami(self, sender: Sender, channel: str) -> dict[str, Any]:
        """Principal, roles, channel and the tools the sender may use there."""
        ...
