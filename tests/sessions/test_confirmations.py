"""Confirmations: bound to a principal, expiring, single use, one winner, executed exactly once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sessions.canonical import arguments_hash
from sessions.results import Confirmation
from sessions.store import SessionStore
from tests.sessions.conftest import Target

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ARGS: dict[str, Any] = {"rollout": "ro_firefox_131", "to_ring": 1, "note": "pilot"}


async def ask(store: SessionStore, principal: str = "ana", **kw: Any) -> Confirmation:
    admitted = await store.admit(
        "cli", f"evt-{principal}-{kw}", f"cli:{principal}", principal, "go"
    )
    return await store.create_confirmation(
        principal,
        admitted.conversation_id,
        "cli",
        "rollout.promote",
        kw.pop("arguments", ARGS),
        "Promote firefox 131 to pilot",
        now=kw.pop("now", T0),
        **kw,
    )


async def audit_types(store: SessionStore) -> list[str]:
    return [json.loads(line)["type"] async for line in store.export_audit()]


async def test_a_new_confirmation_is_pending_bound_and_canonical(store: SessionStore) -> None:
    c = await ask(store, arguments={"to_ring": 1, "rollout": "ro_firefox_131", "note": "pilot"})
    assert c.state == "pending" and c.principal_id == "ana" and c.tool == "rollout.promote"
    assert c.arguments == ARGS and c.arguments_hash == arguments_hash(ARGS)
    assert c.expires_at == T0 + timedelta(minutes=10)
    assert c.id.startswith("cf_") and len(c.id) >= 24 and c.idempotency_key
    assert await store.confirmation(c.id) == c
    assert [p.id for p in await store.pending_for("ana", now=T0)] == [c.id]
    assert await store.pending_for("li", now=T0) == []
    assert await audit_types(store) == ["confirmation.created"]


async def test_the_bound_principal_confirms(store: SessionStore) -> None:
    c = await ask(store)
    decided = await store.decide(c.id, "ana", "confirm", c.arguments_hash, now=T0)
    assert decided.ok and decided.outcome == "confirmed"
    assert decided.confirmation is not None
    assert decided.confirmation.state == "confirmed"
    assert (decided.confirmation.decided_by, decided.confirmation.decided_at) == ("ana", T0)
    assert await store.pending_for("ana", now=T0) == []


async def test_another_principal_cannot_confirm_and_learns_nothing(store: SessionStore) -> None:
    c = await ask(store)
    decided = await store.decide(c.id, "mallory", "confirm", now=T0)
    assert not decided.ok and decided.outcome == "wrong_principal"
    assert decided.confirmation is None
    assert (await store.confirmation(c.id)).state == "pending"  # type: ignore[union-attr]
    assert (await store.decide(c.id, "ana", "confirm", now=T0)).ok


async def test_an_expired_confirmation_cannot_be_confirmed(store: SessionStore) -> None:
    c = await ask(store)
    late = T0 + timedelta(minutes=10)
    decided = await store.decide(c.id, "ana", "confirm", now=late)
    assert decided.outcome == "expired" and "expired" in decided.reason
    assert decided.confirmation is not None and decided.confirmation.state == "expired"
    again = await store.decide(c.id, "ana", "confirm", now=late)
    assert again.outcome == "already_decided" and "expired" in again.reason
    assert await store.begin_execution(c.id) is False


async def test_a_replayed_confirm_does_nothing_but_say_why(store: SessionStore) -> None:
    c = await ask(store)
    assert (await store.decide(c.id, "ana", "confirm", now=T0)).ok
    replay = await store.decide(c.id, "ana", "confirm", now=T0 + timedelta(seconds=5))
    assert replay.outcome == "already_decided" and "confirmed" in replay.reason
    assert replay.confirmation is not None and replay.confirmation.decided_at == T0
    denied_late = await store.decide(c.id, "ana", "deny", now=T0)
    assert denied_late.outcome == "already_decided"


async def test_changed_arguments_are_refused_and_the_confirmation_stays(
    store: SessionStore,
) -> None:
    c = await ask(store)
    changed = arguments_hash(ARGS | {"to_ring": 4})
    refused = await store.decide(c.id, "ana", "confirm", changed, now=T0)
    assert refused.outcome == "arguments_changed"
    assert refused.confirmation is not None and refused.confirmation.state == "pending"
    assert (await store.decide(c.id, "ana", "confirm", arguments_hash(ARGS), now=T0)).ok


async def test_deny_and_unknown(store: SessionStore) -> None:
    c = await ask(store)
    denied = await store.decide(c.id, "ana", "deny", now=T0)
    assert denied.ok and denied.outcome == "denied"
    assert (await store.decide(c.id, "ana", "confirm", now=T0)).outcome == "already_decided"
    unknown = await store.decide("cf_nope", "ana", "confirm", now=T0)
    assert unknown.outcome == "unknown" and unknown.confirmation is None
    assert await audit_types(store) == [
        "confirmation.created",
        "confirmation.denied",
        "confirmation.refused",
        "confirmation.refused",
    ]


async def test_twenty_concurrent_confirms_have_exactly_one_winner(store: SessionStore) -> None:
    c = await ask(store)
    results = await asyncio.gather(
        *(store.decide(c.id, "ana", "confirm", c.arguments_hash, now=T0) for _ in range(20))
    )
    assert sorted(r.outcome for r in results) == ["already_decided"] * 19 + ["confirmed"]
    assert (await audit_types(store)).count("confirmation.confirmed") == 1
    assert (await store.verify_audit()).ok


async def test_execution_is_claimed_once_and_finished_once(store: SessionStore) -> None:
    c = await ask(store)
    assert await store.begin_execution(c.id) is False  # not confirmed yet
    await store.decide(c.id, "ana", "confirm", now=T0)
    claims = await asyncio.gather(*(store.begin_execution(c.id) for _ in range(10)))
    assert claims.count(True) == 1
    assert await store.finish_execution(c.id, result={"ring": 1})
    assert not await store.finish_execution(c.id, error="twice")
    done = await store.confirmation(c.id)
    assert done is not None and done.state == "executed" and done.result == {"ring": 1}
    assert done.executed_at is not None and done.error is None
    assert await store.recoverable() == []


async def test_a_failed_execution_keeps_its_error(store: SessionStore) -> None:
    c = await ask(store)
    await store.decide(c.id, "ana", "confirm", now=T0)
    assert await store.begin_execution(c.id)
    assert await store.finish_execution(c.id, error="gate failed: success rate 91%")
    failed = await store.confirmation(c.id)
    assert failed is not None and failed.state == "failed"
    assert failed.error == "gate failed: success rate 91%"


@pytest.mark.parametrize("claimed", [False, True], ids=["confirmed", "executing"])
async def test_a_crash_after_confirm_is_recovered_with_the_same_idempotency_key(
    target: Target, store: SessionStore, claimed: bool
) -> None:
    c = await ask(store)
    await store.decide(c.id, "ana", "confirm", now=T0)
    if claimed:
        assert await store.begin_execution(c.id)
    await store.close()  # the process dies before the control plane is called

    restarted = await target.open()
    try:
        (left,) = await restarted.recoverable()
        assert left.id == c.id and left.idempotency_key == c.idempotency_key
        assert left.state == ("executing" if claimed else "confirmed")
        assert await restarted.begin_execution(c.id) is not claimed
        assert await restarted.finish_execution(c.id, result={"ok": True})
        assert await restarted.recoverable() == []
    finally:
        await restarted.close()


async def test_expire_due_expires_only_what_is_due(store: SessionStore) -> None:
    old = await ask(store, "ana")
    fresh = await ask(store, "li", now=T0 + timedelta(minutes=5))
    assert await store.expire_due(T0 + timedelta(minutes=12)) == 1
    assert (await store.confirmation(old.id)).state == "expired"  # type: ignore[union-attr]
    assert (await store.confirmation(fresh.id)).state == "pending"  # type: ignore[union-attr]
    assert await store.pending_for("ana", now=T0) == []
    assert await store.expire_due(T0 + timedelta(minutes=12)) == 0


async def test_bad_input_is_refused(store: SessionStore) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await ask(store, ttl=timedelta(0))
    with pytest.raises(TypeError, match="JSON"):
        await ask(store, arguments={"when": object()})
