"""Sessions, beside the request path: the gateway's tables (SQLAlchemy 2, SQLite or PostgreSQL).

Text that reaches these tables (message text, audit data, errors) has already been redacted
by the policy layer; only a confirmation's arguments are stored as given, because they are
what gets executed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonType = JSON().with_variant(JSONB(), "postgresql")
"""JSON that is only stored and read back whole (JSONB on PostgreSQL)."""

ExactJson = JSON()
"""JSON kept as written (``json``, not ``jsonb``, on PostgreSQL): audit data is hashed, and
JSONB would rewrite numbers such as ``1e20`` into a form that hashes differently."""

Serial = BigInteger().with_variant(Integer, "sqlite")
"""An auto-incrementing key (SQLite only auto-increments ``INTEGER PRIMARY KEY``)."""

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Conversation(Base):
    """A thread of messages on one channel, found by the channel's own key for it."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("channel", "external_key"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel: Mapped[str] = mapped_column(String(40))
    external_key: Mapped[str] = mapped_column(String(500))
    """The channel's id for it: a Teams conversation id, a Slack channel+thread, ``cli:<p>``."""
    principal_id: Mapped[str] = mapped_column(String(200))
    """The principal whose message opened it."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Message(Base):
    """One inbound or outbound message; inbound ones double as the durable inbox."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation", "conversation_id", "id"),
        Index("ix_messages_status", "status"),
        Index("ix_messages_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(Serial, primary_key=True)
    """Increasing, so it orders a conversation's messages."""
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    direction: Mapped[str] = mapped_column(String(3))
    """``in`` or ``out``."""
    channel: Mapped[str] = mapped_column(String(40))
    channel_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    principal_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """Sender of an inbound message; the addressee, if known, of an outbound one."""
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12))
    """``accepted`` → ``processing`` → ``done`` | ``failed``."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    processed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ProcessedEvent(Base):
    """A channel delivery already admitted; a retried delivery with the same id is dropped."""

    __tablename__ = "processed_events"
    channel: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    """The message the first delivery became; no foreign key, so retention can drop either."""
    conversation_id: Mapped[str] = mapped_column(String(40))


class Confirmation(Base):
    """A mutating tool call waiting for, or past, its principal's explicit decision."""

    __tablename__ = "confirmations"
    __table_args__ = (
        Index("ix_confirmations_principal", "principal_id", "state"),
        Index("ix_confirmations_state", "state", "expires_at"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """Unguessable (``secrets``), shown on the card and typed back by CLI users."""
    principal_id: Mapped[str] = mapped_column(String(200))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(40))
    tool: Mapped[str] = mapped_column(String(100))
    arguments: Mapped[str] = mapped_column(Text)
    """RFC 8785 canonical JSON, kept as text so ``arguments_hash`` can be recomputed exactly."""
    arguments_hash: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12))
    """pending → confirmed → executing → executed | failed; pending → denied | expired."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    executed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    """Sent with the execution; the control plane runs a key at most once."""
    result: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ConversationReference(Base):
    """What a channel needs to post into a conversation later (proactive replies)."""

    __tablename__ = "conversation_references"
    channel: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_key: Mapped[str] = mapped_column(String(500), primary_key=True)
    reference: Mapped[dict[str, Any]] = mapped_column(JsonType)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class NotificationSubscription(Base):
    """A principal who wants to hear about a control-plane topic on a channel."""

    __tablename__ = "notification_subscriptions"
    principal_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    channel: Mapped[str] = mapped_column(String(40), primary_key=True)
    topic: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AuditChainHead(Base):
    """The newest audit record (one row, ``id`` 1); appends move it with a conditional UPDATE."""

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditRecord(Base):
    """One link of the gateway's audit chain; its hash covers its fields and its predecessor."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_timestamp", "timestamp"),)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(60))
    principal_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(ExactJson)
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Notification(Base):
    """A message for one principal on one channel, waiting in the outbox until it is taken."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("principal_id", "channel", "dedupe_key"),
        Index("ix_notifications_undelivered", "principal_id", "channel", "delivered_at", "id"),
        Index("ix_notifications_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(Serial, primary_key=True)
    """Increasing, so it orders a principal's notifications."""
    principal_id: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(40))
    topic: Mapped[str] = mapped_column(String(200))
    """What it is about, such as ``approval.requested`` (the subscription topics)."""
    text: Mapped[str] = mapped_column(Text)
    """One plain sentence or two, ids included; already stripped of markup."""
    data: Mapped[dict[str, Any]] = mapped_column(JsonType)
    """Structured facts (ids, ring) a channel may render as a card."""
    dedupe_key: Mapped[str] = mapped_column(String(200))
    """Names what happened (``approval:apr_…``), so it is stored once per principal and
    channel however often, and by however many replicas, the event is read."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """Set, once, by the conditional UPDATE that hands it to the channel."""
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How often a push channel claimed it for sending (see ``sessions.notifications``)."""
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """While set and in the future, a push channel holds it (sending, or backing off)."""


class NotificationCursor(Base):
    """How far the notification poller has read one source (a control-plane event type)."""

    __tablename__ = "notification_cursor"
    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    """The last event seq read and acted on; it only ever moves forward."""
    event_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """That event's time, so the next read can ask only for events since about then."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RateBucket(Base):
    """A token bucket shared by every gateway replica (used on PostgreSQL; see ``ratelimit``)."""

    __tablename__ = "rate_buckets"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    """What is limited, such as ``message:ana``."""
    tokens: Mapped[float] = mapped_column(Float)
    """Tokens left after the last take."""
    allowed: Mapped[bool] = mapped_column(Boolean)
    """Whether the last take was allowed (read back by the same statement)."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    """The database's clock at the last take, so every replica refills from one clock."""


class EmailOutbox(Base):
    """A reply the email channel owes, from admission until the relay accepted it."""

    __tablename__ = "email_outbox"
    __table_args__ = (Index("ix_email_outbox_unsent", "sent_at", "message_id"),)
    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """The inbound message the reply answers (``messages.id``; no foreign key, like
    ``processed_events``, so retention can drop either)."""
    conversation_id: Mapped[str] = mapped_column(String(40))
    principal_id: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(320))
    """The verified From address the reply goes to."""
    subject: Mapped[str] = mapped_column(Text)
    """The reply's subject (``Re: …``)."""
    in_reply_to: Mapped[str] = mapped_column(String(1000))
    """The inbound Message-ID."""
    thread_references: Mapped[str] = mapped_column(Text)
    """The reply's References header (the thread's ids, the inbound one last)."""
    reply_id: Mapped[str] = mapped_column(String(250), unique=True)
    """The reply's own Message-ID, fixed before the first attempt so a resend repeats it."""
    notes: Mapped[list[str]] = mapped_column(JsonType)
    """Lines shown above the reply (ignored attachments, waiting notifications)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """A sender holds the entry until then; another replica or the flush leaves it alone."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """When the relay accepted the reply; set once, so it is sent once."""
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class EmailCode(Base):
    """A single-use confirmation code sent by email, stored only as its sha256."""

    __tablename__ = "email_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    confirmation_id: Mapped[str] = mapped_column(String(64), unique=True)
    """The pending confirmation the code decides (one code per confirmation)."""
    principal_id: Mapped[str] = mapped_column(String(200))
    sender: Mapped[str] = mapped_column(String(320))
    """The address the code was sent to; only mail verified as from it may use it."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    """The Message-ID of the reply that used it (its redelivery may use it again)."""
