"""Retention: purge removes what is old and finished, never pending work or the audit chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sessions.store import SessionStore

OLD = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
NOW = OLD + timedelta(days=40)
KEEP = timedelta(days=30)


async def test_purge_keeps_pending_work_confirmations_and_the_audit_chain(
    store: SessionStore,
) -> None:
    # An old conversation whose turn finished: everything about it may go.
    done = await store.admit("cli", "e1", "cli:ana", "ana", "status?", now=OLD)
    await store.record_reply(
        done.conversation_id, "All green.", in_reply_to=done.message_id, now=OLD
    )
    executed = await store.create_confirmation(
        "ana", done.conversation_id, "cli", "rollout.pause", {"rollout": "r1"}, "Pause", now=OLD
    )
    await store.decide(executed.id, "ana", "confirm", now=OLD)
    await store.begin_execution(executed.id, now=OLD)
    await store.finish_execution(executed.id, result={"paused": True}, now=OLD)
    # An old conversation that still has work in it: unfinished message, open confirmations.
    stuck = await store.admit("cli", "e2", "cli:li", "li", "promote it", now=OLD)
    pending = await store.create_confirmation(
        "li",
        stuck.conversation_id,
        "cli",
        "ring.promote",
        {"ring": 2},
        "Promote",
        now=OLD,
        ttl=timedelta(days=365),
    )
    in_flight = await store.create_confirmation(
        "li",
        stuck.conversation_id,
        "cli",
        "ring.promote",
        {"ring": 3},
        "Promote",
        now=OLD,
        ttl=timedelta(days=365),
    )
    await store.decide(in_flight.id, "li", "confirm", now=OLD)
    # A recent conversation: kept whole.
    recent = await store.admit("cli", "e3", "cli:ana", "ana", "and now?", now=NOW)
    audited_before = await store.verify_audit()

    purged = await store.purge(KEEP, now=NOW)

    assert (purged.messages, purged.processed_events, purged.confirmations) == (2, 1, 1)
    assert purged.conversations == 0  # cli:ana is active again (e3)
    assert [m.id for m in await store.pending_messages()] == [stuck.message_id, recent.message_id]
    assert await store.confirmation(executed.id) is None
    assert (await store.confirmation(pending.id)) is not None
    assert [c.id for c in await store.recoverable()] == [in_flight.id]
    assert [m.text for m in await store.history(recent.conversation_id)] == ["and now?"]
    check = await store.verify_audit()
    assert check.ok and check.head_seq == audited_before.head_seq + 1
    last = [line async for line in store.export_audit(after_seq=audited_before.head_seq)]
    assert '"type":"sessions.purged"' in last[0] and '"messages":2' in last[0]
    # A purged event id may be admitted again: the window must outlast channel retries.
    assert (await store.admit("cli", "e1", "cli:ana", "ana", "status?", now=NOW)).new
    # ... but not while its message is still waiting to be processed.
    assert not (await store.admit("cli", "e2", "cli:li", "li", "promote it", now=NOW)).new


async def test_purge_drops_conversations_left_empty(store: SessionStore) -> None:
    old = await store.admit("slack", "e1", "T1:C1", "li", "hi", now=OLD)
    await store.mark_message(old.message_id, "done", now=OLD)
    purged = await store.purge(KEEP, now=NOW)
    assert (purged.messages, purged.conversations) == (1, 1)
    again = await store.admit("slack", "e9", "T1:C1", "li", "hi again", now=NOW)
    assert again.conversation_id != old.conversation_id


async def test_purge_refuses_a_non_positive_window(store: SessionStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        await store.purge(timedelta(0), now=NOW)
