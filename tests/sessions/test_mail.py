"""The email outbox (claimed once, sent once, due only when the turn finished) and the codes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sessions.store import SessionStore

LEASE = timedelta(seconds=60)


async def admitted(store: SessionStore, event: str = "<m1@example.com>") -> tuple[int, str]:
    done = await store.admit("email", event, "ana@example.com:<m1@example.com>", "ana", "hello")
    return done.message_id, done.conversation_id


async def prepare(store: SessionStore, message_id: int, conversation: str, reply: str) -> bool:
    return await store.mail.prepare(
        message_id=message_id,
        conversation_id=conversation,
        principal_id="ana",
        recipient="ana@example.com",
        subject="Re: hello",
        in_reply_to="<m1@example.com>",
        thread_references=["<m1@example.com>"],
        reply_id=reply,
        notes=["a note"],
    )


async def test_the_first_envelope_wins_and_is_due_only_once_answered(store: SessionStore) -> None:
    message_id, conversation = await admitted(store)
    assert await prepare(store, message_id, conversation, "<r1@goodbot>")
    assert not await prepare(store, message_id, conversation, "<r2@goodbot>")  # redelivery
    entry = await store.mail.entry(message_id)
    assert entry is not None and entry.reply_id == "<r1@goodbot>" and entry.notes == ("a note",)
    assert await store.mail.due() == []  # the turn has not finished
    await store.record_reply(conversation, "the answer", in_reply_to=message_id)
    assert await store.mail.due() == [message_id]
    answer = await store.mail.answer(message_id)
    assert (answer.status, answer.reply) == ("done", "the answer")


async def test_concurrent_senders_claim_an_entry_once_and_it_is_sent_once(
    store: SessionStore,
) -> None:
    message_id, conversation = await admitted(store)
    await prepare(store, message_id, conversation, "<r1@goodbot>")
    claims = await asyncio.gather(*(store.mail.claim(message_id, LEASE) for _ in range(8)))
    assert sum(c is not None for c in claims) == 1
    assert await store.mail.sent(message_id)
    assert not await store.mail.sent(message_id)
    assert await store.mail.is_sent(message_id)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await store.mail.claim(message_id, LEASE, now=later) is None


async def test_a_lapsed_lease_or_failed_attempt_is_taken_again(store: SessionStore) -> None:
    message_id, conversation = await admitted(store)
    await prepare(store, message_id, conversation, "<r1@goodbot>")
    await store.record_reply(conversation, "the answer", in_reply_to=message_id)
    first = await store.mail.claim(message_id, LEASE)
    assert first is not None and first.attempts == 1
    assert await store.mail.claim(message_id, LEASE) is None
    assert await store.mail.due() == []  # held
    later = datetime.now(UTC) + LEASE + timedelta(seconds=1)
    assert await store.mail.due(now=later) == [message_id]  # the sender crashed holding it
    await store.mail.failed(message_id, "451 try later", timedelta(seconds=30))
    again = await store.mail.claim(message_id, LEASE, now=later + timedelta(seconds=31))
    assert again is not None and again.attempts == 2 and again.reply_id == first.reply_id


async def test_a_code_is_spent_once_by_its_own_address_and_principal(store: SessionStore) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=10)
    await store.mail.issue_code(
        code_hash="h1",
        confirmation_id="cf_1",
        principal_id="ana",
        sender="ana@example.com",
        expires_at=expires,
    )
    spend = store.mail.use_code
    assert await spend("h1", principal_id="sam", sender="ana@example.com", used_by="<a>") is None
    assert await spend("h1", principal_id="ana", sender="x@example.com", used_by="<a>") is None
    assert await spend("h2", principal_id="ana", sender="ana@example.com", used_by="<a>") is None
    ok = await spend("h1", principal_id="ana", sender="ana@example.com", used_by="<a>")
    assert ok == "cf_1"
    # The same mail redelivered after a crash may use it again; any other mail may not.
    assert await spend("h1", principal_id="ana", sender="ana@example.com", used_by="<a>") == "cf_1"
    assert await spend("h1", principal_id="ana", sender="ana@example.com", used_by="<b>") is None


async def test_an_expired_code_is_refused_and_a_reissue_replaces_an_unused_one(
    store: SessionStore,
) -> None:
    now = datetime.now(UTC)
    for code in ("h1", "h2"):  # the second issue (another key after a restart) replaces it
        await store.mail.issue_code(
            code_hash=code,
            confirmation_id="cf_1",
            principal_id="ana",
            sender="ana@example.com",
            expires_at=now + timedelta(minutes=10),
        )
    spend = store.mail.use_code
    assert await spend("h1", principal_id="ana", sender="ana@example.com", used_by="<a>") is None
    late = now + timedelta(minutes=11)
    assert (
        await spend("h2", principal_id="ana", sender="ana@example.com", used_by="<a>", now=late)
        is None
    )
    assert await spend("h2", principal_id="ana", sender="ana@example.com", used_by="<a>") == "cf_1"
