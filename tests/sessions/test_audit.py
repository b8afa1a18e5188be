"""Audit chain: appends under concurrency, independent recomputation, and tamper detection."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime
from typing import Any

import pytest
import rfc8785
from sqlalchemy import delete, insert, update

from sessions.models import AuditRecord
from sessions.store import SessionStore

GENESIS = "0" * 64


async def five_records(store: SessionStore) -> None:
    await store.audit("message.received", "ana", "cli", "conv_1", {"text": "hi", "size": 2})
    await store.audit("policy.decided", "ana", "cli", "conv_1", {"allowed": True, "rule": "r1"})
    await store.audit("tool.called", "ana", "cli", "conv_1", {"tool": "approvals.pending"})
    await store.audit("reply.sent", "ana", "cli", "conv_1", {"chars": 42, "ratio": 0.5})
    await store.audit("policy.denied", None, "slack", None, {"reason": "unknown sender"})


async def export(store: SessionStore, **kw: Any) -> list[dict[str, Any]]:
    lines = [line async for line in store.export_audit(**kw)]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    return [json.loads(line) for line in lines]


def recompute(record: dict[str, Any]) -> str:
    """The hash as an auditor computes it from an exported line, without goodbot's code."""
    fields = {k: v for k, v in record.items() if k not in ("prev_hash", "hash")}
    return hashlib.sha256(record["prev_hash"].encode() + b"\n" + rfc8785.dumps(fields)).hexdigest()


async def tamper(store: SessionStore, *statements: Any) -> None:
    """Change stored rows behind the store's back, as someone with database access could."""
    async with store.engine.begin() as conn:
        for statement in statements:
            await conn.execute(statement)


def at(seq: int) -> Any:
    return AuditRecord.seq == seq


async def test_an_untouched_chain_verifies(store: SessionStore) -> None:
    assert (await store.verify_audit()).ok
    await five_records(store)
    check = await store.verify_audit(batch=2)
    assert (check.ok, check.checked, check.head_seq, check.first_bad_seq) == (True, 5, 5, None)


async def test_the_export_is_canonical_json_lines_that_chain(store: SessionStore) -> None:
    await five_records(store)
    lines = [line async for line in store.export_audit(batch=2)]
    records = [json.loads(line) for line in lines]
    assert [line.encode() for line in lines] == [rfc8785.dumps(r) + b"\n" for r in records]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    prev = GENESIS
    for record in records:
        assert record["prev_hash"] == prev and recompute(record) == record["hash"]
        prev = record["hash"]
    assert records[3]["data"] == {"chars": 42, "ratio": 0.5}
    assert [r["seq"] for r in await export(store, after_seq=3)] == [4, 5]


async def test_concurrent_appends_form_one_unbroken_chain(store: SessionStore) -> None:
    await asyncio.gather(
        *(store.audit("message.received", f"p{i}", "cli", None, {"n": i}) for i in range(30))
    )
    records = await export(store)
    assert [r["seq"] for r in records] == list(range(1, 31))
    assert sorted(r["data"]["n"] for r in records) == list(range(30))
    assert (await store.verify_audit()).ok


async def test_two_stores_on_one_database_share_the_chain(store: SessionStore) -> None:
    other = SessionStore(store.engine)  # a second replica: its own head hint, same rows
    await store.audit("message.received", "ana", "cli", None, {})
    await other.audit("message.received", "li", "cli", None, {})
    await store.audit("message.received", "ana", "cli", None, {})  # its hint is stale now
    assert [r["principal_id"] for r in await export(store)] == ["ana", "li", "ana"]
    assert (await store.verify_audit()).ok


async def test_verify_detects_an_edited_record(store: SessionStore) -> None:
    await five_records(store)
    await tamper(store, update(AuditRecord).where(at(3)).values(data={"tool": "ring.promote"}))
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == 3 and check.checked == 3
    assert "does not match its fields" in (check.problem or "")


async def test_verify_detects_an_edit_whose_hash_was_recomputed(store: SessionStore) -> None:
    await five_records(store)
    forged = (await export(store))[1] | {"principal_id": "someone-else"}
    await tamper(
        store,
        update(AuditRecord)
        .where(at(2))
        .values(principal_id="someone-else", hash=recompute(forged)),
    )
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == 3
    assert "prev_hash is not the hash of record 2" in (check.problem or "")


async def test_verify_detects_reordered_records(store: SessionStore) -> None:
    await five_records(store)
    await tamper(
        store,
        update(AuditRecord).where(at(2)).values(seq=-2),
        update(AuditRecord).where(at(3)).values(seq=2),
        update(AuditRecord).where(at(-2)).values(seq=3),
    )
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == 2 and check.checked == 2


async def test_verify_detects_a_deleted_record(store: SessionStore) -> None:
    await five_records(store)
    await tamper(store, delete(AuditRecord).where(at(4)))
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == 4
    assert check.problem == "record 4 is missing (deleted)"


async def test_verify_detects_a_deleted_newest_record(store: SessionStore) -> None:
    await five_records(store)
    await tamper(store, delete(AuditRecord).where(at(5)))
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == 5 and check.checked == 4
    assert "missing" in (check.problem or "")


async def test_verify_detects_a_record_inserted_behind_the_heads_back(store: SessionStore) -> None:
    await five_records(store)
    fifth = (await export(store))[4]
    sixth = {**fifth, "seq": 6, "type": "policy.allowed", "prev_hash": fifth["hash"]}
    sixth["hash"] = recompute(sixth)
    sixth["timestamp"] = datetime.fromisoformat(sixth["timestamp"])
    await tamper(store, insert(AuditRecord).values(**sixth))
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == 6
    assert "inserted behind its back" in (check.problem or "")


async def test_audit_types_are_dotted_lowercase(store: SessionStore) -> None:
    with pytest.raises(ValueError, match="dotted lowercase"):
        await store.audit("Message Received", "ana", "cli", None, {})
    with pytest.raises(TypeError, match="JSON"):
        await store.audit("message.received", "ana", "cli", None, {"x": object()})
    assert (await store.verify_audit()).head_seq == 0
