"""Sessions, beside the request path: ``SessionStore``, the gateway's one door to its database.

The gateway admits each delivery here before acting on it, tools persist confirmations here,
and every layer appends to the audit chain here. SQLite (WAL, the default) and PostgreSQL
(N replicas) run the same statements; correctness never rests on a lock held in this process:
state changes are conditional UPDATEs and de-duplication is a unique key.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sessions import audit as chain
from sessions import confirmations, messages, retention
from sessions.canonical import canonical, to_json
from sessions.db import Database, create_engine, migrate
from sessions.directory import Directory
from sessions.group_commit import GroupCommit
from sessions.mail import MailStore
from sessions.notifications import NotificationOutbox
from sessions.results import (
    IN_FLIGHT,
    UNFINISHED,
    Admitted,
    AuditCheck,
    AuditEntry,
    Confirmation,
    Decided,
    Decision,
    MessageStatus,
    Purged,
    StoredMessage,
)

AUDIT_TYPE: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
"""Audit record types are dotted lowercase, like policy actions: ``message.received``."""

_C: Final = confirmations.TABLE.c


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        # A naive time would be read as local time in hashes and as UTC in columns.
        raise ValueError("naive datetime given as now")
    return now


class SessionStore:
    """Conversations, the durable inbox, confirmations, references and the audit chain.

    Build one per process with ``SessionStore.open`` and share it; every method is one short
    transaction. Confirmation transitions audit themselves in their own transaction.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine made by ``sessions.db.create_engine`` (already migrated)."""
        self.db = Database(engine)
        """The engine and the write discipline (one writer at a time on SQLite)."""
        self.directory = Directory(self.db)
        """Conversation references and notification subscriptions."""
        self.notifications = NotificationOutbox(self.db)
        """Notifications waiting for their principals, and the poller's cursors."""
        self.mail = MailStore(self.db)
        """The email channel's outbox and single-use confirmation codes."""
        self._chain = chain.AuditChain()
        self._audit = GroupCommit(self._append)

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for health checks and tests)."""
        return self.db.engine

    @classmethod
    async def open(
        cls, url: str, *, schema: str | None = None, migrate_schema: bool = True
    ) -> SessionStore:
        """Connect to ``url`` and, unless told not to, migrate the gateway's tables first.

        Args:
            url: SQLAlchemy URL: ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://…``
                (plain ``sqlite://`` and ``postgresql://`` get their async driver).
            schema: PostgreSQL schema for the tables (the connection's search_path).
            migrate_schema: Run the Alembic migrations to head before returning.
        """
        engine = create_engine(url, schema)
        if migrate_schema:
            try:
                await migrate(engine)
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine)

    async def close(self) -> None:
        """Finish the audit batch in flight and close every pooled connection."""
        await self._audit.close()
        await self.db.close()

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # The durable inbox and history.

    async def admit(
        self,
        channel: str,
        event_id: str,
        conversation_key: str,
        principal_id: str,
        text: str,
        channel_message_id: str | None = None,
        *,
        audit: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Admitted:
        """Store an inbound message as ``accepted`` before anything processes it.

        One transaction records the channel's event id, finds or opens the conversation and
        stores the message. A retried delivery (same channel and event id) writes nothing.

        Args:
            channel: Channel name, such as ``cli`` or ``teams``.
            event_id: The channel's id for this delivery, stable across its retries.
            conversation_key: The channel's key for the conversation (``cli:<principal>``).
            principal_id: The resolved sender.
            text: The message text, already redacted.
            channel_message_id: The channel's id for the message, if it has one.
            audit: When given, a ``message.received`` audit record with this data (and the
                new ``message_id``) is appended in the same transaction; already redacted.
            now: The time of admission; the current time if None.

        Returns:
            ``Admitted(new=False, …)`` naming the first delivery's message for a repeat.
        """
        moment = _now(now)
        try:
            async with self.db.writing(urgent=True) as conn:
                admitted = await messages.admit(
                    conn,
                    channel=channel,
                    event_id=event_id,
                    conversation_key=conversation_key,
                    principal_id=principal_id,
                    text=text,
                    channel_message_id=channel_message_id,
                    now=moment,
                )
                if audit is not None:
                    data = {**audit, "message_id": admitted.message_id}
                    record = self._record(
                        "message.received", principal_id, channel, admitted.conversation_id, data
                    )
                    await self._chain.append(conn, [record], moment)
                return admitted
        except messages.DuplicateEventError:
            async with self.db.reading() as conn:
                return await messages.first_admission(conn, channel, event_id)

    async def open_conversation(
        self, channel: str, conversation_key: str, principal_id: str, *, now: datetime | None = None
    ) -> str:
        """The id of the channel's conversation ``conversation_key``, opened if new.

        For channels that call tools without a stored message (MCP): a confirmation needs the
        conversation it was proposed in.
        """
        async with self.db.writing() as conn:
            return await messages.conversation(
                conn, channel, conversation_key, principal_id, _now(now)
            )

    async def mark_message(
        self,
        message_id: int,
        status: MessageStatus,
        error: str | None = None,
        *,
        now: datetime | None = None,
    ) -> bool:
        """Record how far an inbound message got; ``done`` and ``failed`` stamp ``processed_at``.

        Returns:
            False when there is no inbound message with that id.
        """
        async with self.db.writing() as conn:
            return await messages.mark(conn, message_id, status, error, _now(now))

    async def record_reply(
        self,
        conversation_id: str,
        text: str,
        *,
        in_reply_to: int | None = None,
        principal_id: str | None = None,
        channel_message_id: str | None = None,
        audit: Mapping[str, Any] | None = None,
        channel: str | None = None,
        audit_before: Sequence[tuple[str, Mapping[str, Any]]] = (),
        now: datetime | None = None,
    ) -> int:
        """Store goodbot's reply; if it answers ``in_reply_to``, mark that message ``done``.

        Args:
            conversation_id: Conversation the reply goes to.
            text: The reply text, already redacted.
            in_reply_to: The inbound message it finishes, in the same transaction.
            principal_id: The addressee, if one.
            channel_message_id: The channel's id for the sent message, if known.
            audit: When given, a ``message.replied`` audit record with this data (and the
                reply's ``reply_id``) is appended in the same transaction; already redacted.
            channel: The channel, for that audit record.
            audit_before: Further ``(type, data)`` records of the turn (its tool calls),
                appended before ``message.replied`` in the same transaction.
            now: The time of the reply; the current time if None.

        Returns:
            The stored reply's message id.

        Raises:
            LookupError: there is no such conversation.
        """
        moment = _now(now)
        async with self.db.writing() as conn:
            reply_id = await messages.reply(
                conn,
                conversation_id=conversation_id,
                text=text,
                principal_id=principal_id,
                channel_message_id=channel_message_id,
                in_reply_to=in_reply_to,
                now=moment,
            )
            records = [
                self._record(kind, principal_id, channel, conversation_id, data)
                for kind, data in audit_before
            ]
            if audit is not None:
                data = {**audit, "reply_id": reply_id}
                records.append(
                    self._record("message.replied", principal_id, channel, conversation_id, data)
                )
            await self._chain.append(conn, records, moment)
            return reply_id

    async def pending_messages(
        self, limit: int = 1000, *, before: datetime | None = None
    ) -> list[StoredMessage]:
        """Inbound messages left ``accepted`` or ``processing`` (after a crash), oldest first.

        ``before`` keeps only messages admitted earlier, so that with several replicas one
        does not answer a message another is answering now.
        """
        async with self.db.reading() as conn:
            return await messages.pending(conn, limit, before)

    async def queue_depths(self) -> dict[str, int]:
        """What is waiting, database-wide: unanswered inbound messages, pending
        confirmations and undelivered notifications (for the ``queue depth`` gauge)."""
        from sessions.notifications import TABLE as NOTIFICATIONS

        inbox = select(func.count()).where(
            messages.MESSAGES.c.direction == "in", messages.MESSAGES.c.status.in_(UNFINISHED)
        )
        pending = select(func.count()).where(_C.state == "pending")
        undelivered = select(func.count()).where(NOTIFICATIONS.c.delivered_at.is_(None))
        async with self.db.reading() as conn:
            return {
                "inbox": int((await conn.execute(inbox)).scalar_one()),
                "confirmations_pending": int((await conn.execute(pending)).scalar_one()),
                "notifications_undelivered": int((await conn.execute(undelivered)).scalar_one()),
            }

    async def history(self, conversation_id: str, limit: int = 20) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, both directions, oldest first."""
        async with self.db.reading() as conn:
            return await messages.history(conn, conversation_id, limit)

    # Confirmations.

    async def create_confirmation(
        self,
        principal_id: str,
        conversation_id: str,
        channel: str,
        tool: str,
        arguments: Mapping[str, Any],
        summary: str,
        ttl: timedelta = confirmations.DEFAULT_TTL,
        *,
        now: datetime | None = None,
    ) -> Confirmation:
        """Persist a mutating tool call as a pending confirmation bound to ``principal_id``.

        Args:
            principal_id: The only principal who may decide it.
            conversation_id: Conversation it is asked in.
            channel: Channel it is asked on.
            tool: Tool to run once confirmed.
            arguments: The structured arguments (JSON), stored in RFC 8785 canonical form.
            summary: One line for people.
            ttl: How long it waits for a decision (default ten minutes).
            now: Creation time; the current time if None.

        Raises:
            ValueError: ``ttl`` is not positive, or ``arguments`` hold a number RFC 8785
                cannot represent.
            TypeError: ``arguments`` are not JSON.
        """
        async with self.db.writing() as conn:
            return await confirmations.create(
                conn,
                self._chain,
                principal_id=principal_id,
                conversation_id=conversation_id,
                channel=channel,
                tool=tool,
                arguments=arguments,
                summary=summary,
                ttl=ttl,
                now=_now(now),
            )

    async def decide(
        self,
        confirmation_id: str,
        principal_id: str,
        decision: Decision,
        arguments_hash: str | None = None,
        now: datetime | None = None,
    ) -> Decided:
        """Confirm or deny, as one conditional UPDATE; otherwise say precisely why not.

        The UPDATE matches only a pending confirmation of ``principal_id`` that has not
        expired (and whose arguments hash is ``arguments_hash``, when given), so of many
        concurrent clicks exactly one succeeds. When it matches nothing the row is read to
        name the reason: ``unknown``, ``wrong_principal``, ``already_decided`` (the
        confirmation's state says which), ``expired`` (and it is marked so) or
        ``arguments_changed``. Successes and refusals are audited.

        Args:
            confirmation_id: The token from the card or prompt.
            principal_id: The principal deciding.
            decision: ``confirm`` or ``deny``.
            arguments_hash: The hash of the arguments the principal was shown, if the
                channel echoes it back.
            now: The time of the decision; the current time if None.
        """
        async with self.db.writing() as conn:
            return await confirmations.decide(
                conn,
                self._chain,
                confirmation_id,
                principal_id,
                decision,
                arguments_hash,
                _now(now),
            )

    async def begin_execution(self, confirmation_id: str, *, now: datetime | None = None) -> bool:
        """Claim a confirmed confirmation for execution (confirmed → executing), once.

        Returns:
            True for exactly one caller; False when it is not confirmed (any longer).
        """
        async with self.db.writing() as conn:
            return await confirmations.begin_execution(
                conn, self._chain, confirmation_id, _now(now)
            )

    async def finish_execution(
        self,
        confirmation_id: str,
        *,
        result: Any = None,
        error: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Record the execution's end: ``executed`` with ``result``, or ``failed`` with ``error``.

        Returns:
            False when the confirmation is not executing.
        """
        async with self.db.writing() as conn:
            return await confirmations.finish_execution(
                conn, self._chain, confirmation_id, result, error, _now(now)
            )

    async def confirmation(self, confirmation_id: str) -> Confirmation | None:
        """One confirmation as stored, or None."""
        rows = await self._confirmations(_C.id == confirmation_id)
        return rows[0] if rows else None

    async def recoverable(self, *, before: datetime | None = None) -> list[Confirmation]:
        """Confirmations a crash left ``confirmed`` or ``executing``, oldest first.

        ``before`` keeps only those decided earlier (another replica may be running a newer
        one). Resume each with its stored ``idempotency_key``: call ``begin_execution`` for a
        confirmed one, then execute; re-execute an executing one directly. The control plane
        runs a key at most once, so a resumption that repeats a finished call is harmless.
        """
        where: list[Any] = [_C.state.in_(IN_FLIGHT)]
        if before is not None:
            where.append(_C.decided_at < before)
        return await self._confirmations(*where)

    async def pending_for(
        self, principal_id: str, *, now: datetime | None = None
    ) -> list[Confirmation]:
        """The principal's confirmations still waiting for a decision, oldest first."""
        return await self._confirmations(
            _C.principal_id == principal_id, _C.state == "pending", _C.expires_at > _now(now)
        )

    async def expire_due(self, now: datetime | None = None) -> int:
        """Mark pending confirmations past their expiry ``expired``; how many there were."""
        async with self.db.writing() as conn:
            return await confirmations.expire_due(conn, self._chain, _now(now))

    async def _confirmations(self, *where: Any) -> list[Confirmation]:
        table = confirmations.TABLE
        stmt = select(table).where(*where).order_by(_C.created_at, _C.id)
        async with self.db.reading() as conn:
            return [confirmations.from_row(row) for row in await conn.execute(stmt)]

    # The audit chain.

    async def audit(
        self,
        type: str,
        principal_id: str | None,
        channel: str | None,
        conversation_id: str | None,
        data: Mapping[str, Any],
    ) -> AuditEntry:
        """Append one record to the audit chain and return it once committed.

        Args:
            type: Dotted lowercase kind, such as ``message.received`` or ``policy.denied``.
            principal_id: Who it concerns, if anyone.
            channel: Channel it happened on, if any.
            conversation_id: Conversation it happened in, if any.
            data: Further detail (JSON), already redacted.

        Concurrent calls are committed together (``sessions.group_commit``), one chain-head
        move per batch; each record takes the time of its batch's commit.

        Raises:
            ValueError: ``type`` is not dotted lowercase, or ``data`` holds a number RFC 8785
                cannot represent (an integer beyond 2**53).
            TypeError: ``data`` is not JSON.
        """
        # Checked here so that one bad record cannot fail the batch it would have joined.
        record = self._record(type, principal_id, channel, conversation_id, data)
        return await self._audit.submit(record)

    @staticmethod
    def _record(
        type: str,
        principal_id: str | None,
        channel: str | None,
        conversation_id: str | None,
        data: Mapping[str, Any],
    ) -> chain.NewAudit:
        """A checked new audit record: dotted type, JSON data RFC 8785 can represent."""
        if not AUDIT_TYPE.match(type):
            raise ValueError(f"audit type {type!r} is not dotted lowercase")
        record = chain.NewAudit(type, principal_id, channel, conversation_id, to_json(dict(data)))
        canonical(record.data)
        return record

    async def _append(self, records: Sequence[chain.NewAudit]) -> list[AuditEntry]:
        async with self.db.writing() as conn:
            return await self._chain.append(conn, records, datetime.now(UTC))

    async def verify_audit(self, *, batch: int = chain.VERIFY_BATCH) -> AuditCheck:
        """Walk the whole chain and report the first edited, inserted, moved or deleted record."""
        return await chain.verify(self.engine, batch=batch)

    async def export_audit(
        self, *, after_seq: int | None = None, batch: int = chain.VERIFY_BATCH
    ) -> AsyncIterator[str]:
        """Yield the chain as JSON lines (RFC 8785 canonical, ``\\n``-terminated), seq order.

        Each line holds a record's hashed fields plus ``prev_hash`` and ``hash``, so anyone
        can recompute the chain from an export.

        Args:
            after_seq: Only records after this seq; None for all.
            batch: Rows read per query.
        """
        async for rows in chain.read_records(self.engine, after=after_seq, batch=batch):
            for row in rows:
                yield canonical(chain.document(row)).decode() + "\n"

    # Retention.

    async def purge(self, older_than: timedelta, now: datetime | None = None) -> Purged:
        """Apply retention in one transaction and audit the counts.

        Deletes finished messages with their de-duplication entries and finished (executed,
        failed, denied, expired) confirmations older than ``older_than``, then conversations
        left empty and idle as long. Never unfinished messages, pending or in-flight
        confirmations, references, subscriptions or the audit chain. A retried delivery older
        than the window would be admitted again, so keep it far longer than any channel's
        retries.

        Raises:
            ValueError: ``older_than`` is not positive.
        """
        async with self.db.writing() as conn:
            return await retention.purge(conn, self._chain, older_than, _now(now))
