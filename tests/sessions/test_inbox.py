"""Durable inbox: de-duplication of retried deliveries, store-before-process, recovery, history."""

from __future__ import annotations

import asyncio

import pytest

from sessions.store import SessionStore
from tests.sessions.conftest import Target


async def admit(
    store: SessionStore, event_id: str, text: str = "hello", key: str = "cli:ana"
) -> int:
    admitted = await store.admit("cli", event_id, key, "ana", text, channel_message_id=event_id)
    assert admitted.new
    return admitted.message_id


async def test_a_retried_delivery_is_admitted_once(store: SessionStore) -> None:
    first = await store.admit("cli", "evt-1", "cli:ana", "ana", "what is pending?")
    again = await store.admit("cli", "evt-1", "cli:ana", "ana", "what is pending?")
    assert first.new and not again.new
    assert (again.message_id, again.conversation_id) == (first.message_id, first.conversation_id)
    assert [m.id for m in await store.history(first.conversation_id)] == [first.message_id]
    assert [m.id for m in await store.pending_messages()] == [first.message_id]


async def test_concurrent_retries_of_one_delivery_store_one_message(store: SessionStore) -> None:
    results = await asyncio.gather(
        *(store.admit("slack", "Ev42", "T1:C1", "li", "promote it") for _ in range(10))
    )
    assert sum(r.new for r in results) == 1
    assert len({(r.message_id, r.conversation_id) for r in results}) == 1
    assert len(await store.pending_messages()) == 1


async def test_event_ids_are_per_channel_and_conversations_per_key(store: SessionStore) -> None:
    cli = await store.admit("cli", "e1", "cli:ana", "ana", "one")
    slack = await store.admit("slack", "e1", "T1:C1", "ana", "two")
    later = await store.admit("cli", "e2", "cli:ana", "ana", "three")
    assert cli.new and slack.new and later.new
    assert cli.conversation_id == later.conversation_id != slack.conversation_id


async def test_an_accepted_message_is_stored_before_processing_and_survives_a_crash(
    target: Target, store: SessionStore
) -> None:
    message_id = await admit(store, "evt-7", "promote firefox 131 to pilot")
    await store.mark_message(message_id, "processing")
    await store.close()  # the process dies mid-turn

    restarted = await target.open()
    try:
        (left,) = await restarted.pending_messages()
        assert (left.id, left.status, left.text) == (
            message_id,
            "processing",
            "promote firefox 131 to pilot",
        )
        assert left.direction == "in" and left.processed_at is None
        reply_id = await restarted.record_reply(
            left.conversation_id, "Done.", in_reply_to=message_id, principal_id="ana"
        )
        assert await restarted.pending_messages() == []
        history = await restarted.history(left.conversation_id)
        assert [(m.id, m.direction, m.status) for m in history] == [
            (message_id, "in", "done"),
            (reply_id, "out", "done"),
        ]
        assert history[0].processed_at is not None
    finally:
        await restarted.close()


async def test_history_is_the_newest_window_oldest_first(store: SessionStore) -> None:
    ids = [await admit(store, f"evt-{i}", f"message {i}") for i in range(6)]
    conversation_id = (await store.pending_messages())[0].conversation_id
    window = await store.history(conversation_id, limit=3)
    assert [m.id for m in window] == ids[-3:]
    assert [m.text for m in window] == ["message 3", "message 4", "message 5"]


async def test_a_failed_message_keeps_its_error_and_leaves_the_inbox(store: SessionStore) -> None:
    message_id = await admit(store, "evt-9")
    assert await store.mark_message(message_id, "failed", "control plane timed out")
    assert await store.pending_messages() == []
    conversation_id = (await store.admit("cli", "evt-9", "cli:ana", "ana", "x")).conversation_id
    (failed,) = await store.history(conversation_id)
    assert failed.status == "failed" and failed.error == "control plane timed out"
    assert not await store.mark_message(123456, "done")
    with pytest.raises(ValueError, match="status"):
        await store.mark_message(message_id, "lost")  # type: ignore[arg-type]
    with pytest.raises(LookupError):
        await store.record_reply("conv_missing", "hello?")
