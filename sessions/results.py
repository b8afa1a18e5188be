"""Sessions, beside the request path: the frozen results a ``SessionStore`` hands back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

Direction = Literal["in", "out"]
MessageStatus = Literal["accepted", "processing", "done", "failed"]
ConfirmationState = Literal[
    "pending", "confirmed", "executing", "executed", "denied", "expired", "failed"
]
Decision = Literal["confirm", "deny"]
Outcome = Literal[
    "confirmed",
    "denied",
    "unknown",
    "wrong_principal",
    "expired",
    "already_decided",
    "arguments_changed",
]

MESSAGE_STATUSES: Final = frozenset({"accepted", "processing", "done", "failed"})
UNFINISHED: Final = ("accepted", "processing")
"""Message states a crash can leave behind; ``pending_messages`` lists them."""
IN_FLIGHT: Final = ("confirmed", "executing")
"""Confirmation states a crash can leave behind; ``recoverable`` lists them."""
FINISHED: Final = ("executed", "failed", "denied", "expired")
"""Confirmation states nothing follows; only these are purged."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """What ``SessionStore.admit`` did with a channel delivery."""

    new: bool
    """False when the channel had delivered this event id before: nothing was written."""
    message_id: int
    """The stored inbound message (for a repeat, the one the first delivery became)."""
    conversation_id: str
    """The conversation the message belongs to."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored."""

    id: int
    """Increasing id; orders the messages of a conversation."""
    conversation_id: str
    """Conversation it belongs to."""
    direction: Direction
    """``in`` from a person, ``out`` from goodbot."""
    channel: str
    """Channel it came in on or went out on."""
    channel_message_id: str | None
    """The channel's own id for it, if it has one."""
    principal_id: str | None
    """Sender of an inbound message; addressee (if known) of an outbound one."""
    text: str
    """The text, already redacted."""
    status: MessageStatus
    """Where processing stands; outbound messages are stored ``done``."""
    created_at: datetime
    """When it was stored."""
    processed_at: datetime | None
    """When it reached ``done`` or ``failed``."""
    error: str | None
    """Why it failed, if it did."""


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A mutating tool call bound to one principal, its arguments and an expiry."""

    id: str
    """Unguessable token; the channel's confirm and deny buttons carry it."""
    principal_id: str
    """The only principal who may decide it."""
    conversation_id: str
    """Conversation it was asked in."""
    channel: str
    """Channel it was asked on."""
    tool: str
    """Tool to run once confirmed."""
    arguments: dict[str, Any]
    """The exact structured arguments shown to the principal and executed."""
    arguments_hash: str
    """sha256 hex of the RFC 8785 canonical ``arguments``."""
    summary: str
    """One line for people, such as "Promote firefox 131 to pilot"."""
    state: ConfirmationState
    """pending → confirmed → executing → executed | failed; pending → denied | expired."""
    created_at: datetime
    """When it was asked."""
    expires_at: datetime
    """After this instant it can no longer be confirmed."""
    decided_at: datetime | None
    """When it was confirmed, denied or found expired."""
    decided_by: str | None
    """Principal who confirmed or denied it."""
    executed_at: datetime | None
    """When execution finished (``executed`` or ``failed``)."""
    idempotency_key: str
    """Sent with every execution attempt; the control plane runs one key at most once."""
    result: Any
    """What execution returned (JSON), or None."""
    error: str | None
    """Why execution failed, if it did."""


@dataclass(frozen=True, slots=True)
class Decided:
    """What ``SessionStore.decide`` did: the state change, or precisely why there was none."""

    outcome: Outcome
    """``confirmed`` or ``denied`` when the decision took effect; otherwise why it did not."""
    reason: str
    """The outcome as a sentence a channel can show."""
    confirmation: Confirmation | None
    """The confirmation as it now stands; None when unknown or bound to another principal."""

    @property
    def ok(self) -> bool:
        """Whether the decision took effect."""
        return self.outcome in ("confirmed", "denied")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored link of the audit chain."""

    seq: int
    """Position in the chain, from 1 without gaps."""
    type: str
    """Dotted lowercase kind, such as ``message.received`` or ``confirmation.confirmed``."""
    principal_id: str | None
    """Who it concerns, if anyone."""
    channel: str | None
    """Channel it happened on, if any."""
    conversation_id: str | None
    """Conversation it happened in, if any."""
    data: dict[str, Any]
    """Further detail (JSON, already redacted)."""
    timestamp: datetime
    """When it was appended."""
    prev_hash: str
    """Hash of the record before it (64 zeros for the first)."""
    hash: str
    """sha256 over ``prev_hash`` and the canonical JSON of the fields above."""


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """What walking the audit chain found."""

    ok: bool
    """True when every record links to its predecessor and the head matches the newest."""
    checked: int
    """Records examined (the walk stops at the first problem)."""
    head_seq: int
    """Sequence number the chain head records (0 for an empty chain)."""
    first_bad_seq: int | None
    """Sequence number of the first record found wrong or missing; None when ``ok``."""
    problem: str | None
    """What is wrong there, as a sentence; None when ``ok``."""


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows ``SessionStore.purge`` deleted, per kind."""

    messages: int
    """Finished messages older than the cutoff."""
    processed_events: int
    """De-duplication entries older than the cutoff."""
    confirmations: int
    """Finished (executed, failed, denied, expired) confirmations created before the cutoff."""
    conversations: int
    """Conversations idle since before the cutoff with no messages or confirmations left."""
