"""Conversation references and notification subscriptions, kept for proactive messages."""

from __future__ import annotations

from sessions.store import SessionStore


async def test_a_reference_is_saved_replaced_and_read(store: SessionStore) -> None:
    directory = store.directory
    assert await directory.reference("teams", "19:abc@thread") is None
    await directory.save_reference("teams", "19:abc@thread", {"serviceUrl": "https://a", "n": 1})
    await directory.save_reference("teams", "19:abc@thread", {"serviceUrl": "https://b", "n": 2})
    assert await directory.reference("teams", "19:abc@thread") == {
        "serviceUrl": "https://b",
        "n": 2,
    }
    assert await directory.reference("slack", "19:abc@thread") is None


async def test_subscriptions_are_idempotent_and_listed_per_topic(store: SessionStore) -> None:
    directory = store.directory
    assert await directory.subscribe("ana", "cli", "approval.requested")
    assert not await directory.subscribe("ana", "cli", "approval.requested")
    assert await directory.subscribe("li", "teams", "approval.requested")
    assert await directory.subscribe("ana", "teams", "gate.failed")
    assert await directory.subscribers("approval.requested") == [("ana", "cli"), ("li", "teams")]
    assert await directory.unsubscribe("ana", "cli", "approval.requested")
    assert not await directory.unsubscribe("ana", "cli", "approval.requested")
    assert await directory.subscribers("approval.requested") == [("li", "teams")]
