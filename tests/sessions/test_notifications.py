"""The notification outbox: stored once per dedupe key, taken once, cursors only move forward."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sessions.notifications import PUSH_ATTEMPTS, Cursor, NewNotification
from sessions.store import SessionStore
from tests.sessions.conftest import Target

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def note(principal: str, key: str, channel: str = "cli", text: str = "") -> NewNotification:
    return NewNotification(
        principal_id=principal,
        channel=channel,
        topic="approval.requested",
        text=text or f"approval {key} is waiting for you",
        dedupe_key=key,
        data={"approval_id": key, "ring": 2},
    )


async def test_enqueue_is_idempotent_on_principal_channel_and_key(store: SessionStore) -> None:
    outbox = store.notifications
    first = await outbox.enqueue(
        [note("ana", "apr_1"), note("li", "apr_1"), note("ana", "apr_1", "teams")], now=T0
    )
    assert [(n.principal_id, n.channel, n.dedupe_key) for n in first] == [
        ("ana", "cli", "apr_1"),
        ("li", "cli", "apr_1"),
        ("ana", "teams", "apr_1"),
    ]
    assert first[0].data == {"approval_id": "apr_1", "ring": 2}
    assert first[0].created_at == T0 and first[0].delivered_at is None
    # The same event read again (or by another replica), and a repeat within one call.
    again = await outbox.enqueue(
        [note("ana", "apr_1", text="other words"), note("ana", "apr_2"), note("ana", "apr_2")]
    )
    assert [(n.principal_id, n.dedupe_key) for n in again] == [("ana", "apr_2")]
    waiting = await outbox.waiting("ana", "cli")
    assert [(n.dedupe_key, n.text) for n in waiting] == [
        ("apr_1", "approval apr_1 is waiting for you"),
        ("apr_2", "approval apr_2 is waiting for you"),
    ]
    assert await outbox.enqueue([]) == []


async def test_take_hands_over_oldest_first_and_marks_delivered(store: SessionStore) -> None:
    outbox = store.notifications
    for n in range(3):
        await outbox.enqueue([note("ana", f"apr_{n}")], now=T0 + timedelta(seconds=n))
    await outbox.enqueue([note("ana", "apr_t", "teams"), note("li", "apr_l")])
    taken = await outbox.take("ana", "cli", limit=2, now=T0 + timedelta(minutes=1))
    assert [n.dedupe_key for n in taken] == ["apr_0", "apr_1"]
    assert {n.delivered_at for n in taken} == {T0 + timedelta(minutes=1)}
    assert [n.dedupe_key for n in await outbox.take("ana", "cli")] == ["apr_2"]
    assert await outbox.take("ana", "cli") == []
    # Other channels and other principals keep theirs.
    assert [n.dedupe_key for n in await outbox.waiting("ana", "teams")] == ["apr_t"]
    assert [n.dedupe_key for n in await outbox.take("li", "cli")] == ["apr_l"]
    # A delivered notification is not stored again when its event is read again.
    assert await outbox.enqueue([note("ana", "apr_0")]) == []


async def test_concurrent_takes_deliver_each_notification_once(
    store: SessionStore, target: Target
) -> None:
    await store.notifications.enqueue([note("ana", f"apr_{n}") for n in range(40)])
    # A second store is a second process (or replica) on the same database.
    other = await target.open()
    try:
        takes = await asyncio.gather(
            *(
                (store if n % 2 else other).notifications.take("ana", "cli", limit=7)
                for n in range(12)
            )
        )
    finally:
        await other.close()
    ids = [n.id for batch in takes for n in batch]
    assert len(ids) == len(set(ids)) == 40
    for batch in takes:
        assert [n.id for n in batch] == sorted(n.id for n in batch)


async def test_two_pollers_enqueue_the_same_event_once(store: SessionStore, target: Target) -> None:
    other = await target.open()
    try:
        results = await asyncio.gather(
            *(
                s.notifications.enqueue(
                    [note("ana", "apr_9"), note("li", "apr_9")],
                    cursor=Cursor("controlplane:approval_requested", 9, T0),
                )
                for s in (store, other, store, other)
            )
        )
    finally:
        await other.close()
    assert sorted(n.principal_id for batch in results for n in batch) == ["ana", "li"]
    assert await store.notifications.cursor("controlplane:approval_requested") == Cursor(
        "controlplane:approval_requested", 9, T0
    )


async def test_cursors_only_move_forward(store: SessionStore) -> None:
    outbox = store.notifications
    source = "controlplane:rollout_paused"
    assert await outbox.cursor(source) is None
    assert await outbox.set_cursor(Cursor(source, 10, T0))
    assert await outbox.set_cursor(Cursor(source, 12, T0 + timedelta(seconds=1)))
    assert not await outbox.set_cursor(Cursor(source, 11, T0 + timedelta(seconds=2)))
    assert not await outbox.set_cursor(Cursor(source, 12))
    assert await outbox.cursor(source) == Cursor(source, 12, T0 + timedelta(seconds=1))
    # Moving with an enqueue: both or neither.
    await outbox.enqueue([note("ana", "x")], cursor=Cursor(source, 15))
    assert await outbox.cursor(source) == Cursor(source, 15, None)
    await outbox.enqueue([], cursor=Cursor(source, 3))
    assert (await outbox.cursor(source)) == Cursor(source, 15, None)
    assert await outbox.cursor("controlplane:approval_requested") is None


async def test_cursors_survive_a_restart(store: SessionStore, target: Target) -> None:
    await store.notifications.set_cursor(Cursor("controlplane:approval_requested", 745, T0))
    await store.notifications.enqueue([note("ana", "apr_1")])
    await store.close()
    reopened = await target.open()
    try:
        assert await reopened.notifications.cursor("controlplane:approval_requested") == Cursor(
            "controlplane:approval_requested", 745, T0
        )
        assert [n.dedupe_key for n in await reopened.notifications.take("ana", "cli")] == ["apr_1"]
    finally:
        await reopened.close()


async def test_delivered_notifications_are_purged_undelivered_kept(store: SessionStore) -> None:
    outbox = store.notifications
    await outbox.enqueue([note("ana", "old"), note("ana", "new"), note("li", "waiting")], now=T0)
    await outbox.take("ana", "cli", limit=1, now=T0)
    await outbox.take("ana", "cli", now=T0 + timedelta(days=20))
    assert await outbox.purge_delivered(timedelta(days=7), now=T0 + timedelta(days=21)) == 1
    assert [n.dedupe_key for n in await outbox.waiting("li", "cli")] == ["waiting"]
    # The newer delivered one still blocks a repeat of its event.
    assert await outbox.enqueue([note("ana", "new")]) == []


async def test_a_claim_holds_rows_for_its_lease_then_frees_them(store: SessionStore) -> None:
    outbox = store.notifications
    await outbox.enqueue([note("ana", "apr_1", "slack"), note("li", "apr_2", "slack")], now=T0)
    await outbox.enqueue([note("ana", "apr_3", "cli")], now=T0)
    lease = timedelta(seconds=60)
    claimed = await outbox.claim("slack", lease=lease, now=T0)
    assert [(n.principal_id, n.dedupe_key, n.attempts) for n in claimed] == [
        ("ana", "apr_1", 1),
        ("li", "apr_2", 1),
    ]
    # Held: neither another claimer nor the pull path gets them while the lease runs.
    assert await outbox.claim("slack", lease=lease, now=T0 + timedelta(seconds=30)) == []
    assert await outbox.take("ana", "slack", now=T0 + timedelta(seconds=30)) == []
    # The claimer died: once the lease ran out, the rows are claimed again.
    again = await outbox.claim("slack", lease=lease, now=T0 + timedelta(seconds=61))
    assert [(n.dedupe_key, n.attempts) for n in again] == [("apr_1", 2), ("apr_2", 2)]
    assert await outbox.sent([again[0].id], now=T0 + timedelta(seconds=62)) == 1
    assert await outbox.sent([again[0].id]) == 0  # already delivered
    assert [n.dedupe_key for n in await outbox.waiting("li", "slack")] == ["apr_2"]
    assert await outbox.waiting("ana", "slack") == []
    assert [n.dedupe_key for n in await outbox.waiting("ana", "cli")] == ["apr_3"]


async def test_a_failed_send_waits_for_its_retry_time(store: SessionStore) -> None:
    outbox = store.notifications
    await outbox.enqueue([note("ana", "apr_1", "slack")], now=T0)
    (row,) = await outbox.claim("slack", lease=timedelta(seconds=60), now=T0)
    assert await outbox.retry([row.id], T0 + timedelta(minutes=5)) == 1
    later = T0 + timedelta(minutes=4)
    assert await outbox.claim("slack", lease=timedelta(seconds=60), now=later) == []
    (again,) = await outbox.claim(
        "slack", lease=timedelta(seconds=60), now=T0 + timedelta(minutes=5)
    )
    assert again.id == row.id and again.attempts == 2


async def test_after_its_last_push_attempt_a_row_waits_for_take(store: SessionStore) -> None:
    outbox = store.notifications
    await outbox.enqueue([note("ana", "apr_1", "slack")], now=T0)
    moment = T0
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        (row,) = await outbox.claim("slack", lease=timedelta(seconds=1), now=moment)
        assert row.attempts == attempt
        moment += timedelta(seconds=2)
    assert await outbox.claim("slack", lease=timedelta(seconds=1), now=moment) == []
    assert [n.dedupe_key for n in await outbox.take("ana", "slack", now=moment)] == ["apr_1"]


async def test_concurrent_claims_hold_each_row_once(store: SessionStore, target: Target) -> None:
    await store.notifications.enqueue([note(f"p{n % 5}", f"apr_{n}", "slack") for n in range(40)])
    other = await target.open()
    try:
        claims = await asyncio.gather(
            *(
                (store if n % 2 else other).notifications.claim(
                    "slack", lease=timedelta(minutes=1), limit=7
                )
                for n in range(12)
            )
        )
    finally:
        await other.close()
    ids = [n.id for batch in claims for n in batch]
    assert len(ids) == len(set(ids)) == 40
