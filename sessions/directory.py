"""Sessions, beside the request path: where to reach people later (references, subscriptions).

A channel saves the reference it needs to post into a conversation unprompted (a Teams
conversation reference, a Slack channel and thread); notification fan-out looks up who
subscribed to a control-plane topic and on which channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Table, delete, select

from sessions.canonical import to_json
from sessions.db import Database, conflict_insert
from sessions.models import ConversationReference, NotificationSubscription

REFERENCES: Final = cast(Table, ConversationReference.__table__)
SUBSCRIPTIONS: Final = cast(Table, NotificationSubscription.__table__)


class Directory:
    """Conversation references and notification subscriptions; ``SessionStore.directory``."""

    def __init__(self, db: Database) -> None:
        """Share the store's database and its write discipline."""
        self._db = db

    async def save_reference(
        self,
        channel: str,
        conversation_key: str,
        reference: Mapping[str, Any],
        *,
        now: datetime | None = None,
    ) -> None:
        """Store (or replace) what ``channel`` needs to post into ``conversation_key`` later."""
        moment = now or datetime.now(UTC)
        values = {"reference": to_json(dict(reference)), "updated_at": moment}
        async with self._db.writing() as conn:
            stmt = conflict_insert(conn, REFERENCES).values(
                channel=channel, conversation_key=conversation_key, **values
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[REFERENCES.c.channel, REFERENCES.c.conversation_key],
                    set_=values,
                )
            )

    async def reference(self, channel: str, conversation_key: str) -> dict[str, Any] | None:
        """The saved reference for a conversation, or None."""
        stmt = select(REFERENCES.c.reference).where(
            REFERENCES.c.channel == channel, REFERENCES.c.conversation_key == conversation_key
        )
        async with self._db.reading() as conn:
            found = (await conn.execute(stmt)).scalar_one_or_none()
        return None if found is None else dict(found)

    async def subscribe(
        self, principal_id: str, channel: str, topic: str, *, now: datetime | None = None
    ) -> bool:
        """Subscribe a principal to a topic on a channel; False if already subscribed."""
        async with self._db.writing() as conn:
            stmt = (
                conflict_insert(conn, SUBSCRIPTIONS)
                .values(
                    principal_id=principal_id,
                    channel=channel,
                    topic=topic,
                    created_at=now or datetime.now(UTC),
                )
                .on_conflict_do_nothing()
                .returning(SUBSCRIPTIONS.c.topic)
            )
            return (await conn.execute(stmt)).first() is not None

    async def unsubscribe(self, principal_id: str, channel: str, topic: str) -> bool:
        """Drop a subscription; False if there was none."""
        s = SUBSCRIPTIONS.c
        async with self._db.writing() as conn:
            gone = await conn.execute(
                delete(SUBSCRIPTIONS).where(
                    s.principal_id == principal_id, s.channel == channel, s.topic == topic
                )
            )
        return gone.rowcount == 1

    async def subscribers(self, topic: str) -> list[tuple[str, str]]:
        """Who wants to hear about ``topic``, as ``(principal_id, channel)`` pairs, sorted."""
        s = SUBSCRIPTIONS.c
        stmt = (
            select(s.principal_id, s.channel)
            .where(s.topic == topic)
            .order_by(s.principal_id, s.channel)
        )
        async with self._db.reading() as conn:
            return [(row.principal_id, row.channel) for row in await conn.execute(stmt)]
