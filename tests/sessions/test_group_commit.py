"""Audit group commit: concurrent records share a transaction; a failed batch fails only itself."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from sessions.audit import NewAudit
from sessions.group_commit import GroupCommit
from sessions.results import AuditEntry
from sessions.store import SessionStore

NOW = datetime(2026, 3, 2, tzinfo=UTC)


class Ledger:
    """A fake commit that records its batches and fails the ones it is told to."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail_next = False

    async def commit(self, records: Sequence[NewAudit]) -> list[AuditEntry]:
        await asyncio.sleep(0)  # a real commit yields to the loop while it runs
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        self.batches.append([r.type for r in records])
        start = sum(map(len, self.batches)) - len(records)
        return [
            AuditEntry(start + i + 1, r.type, None, None, None, r.data, NOW, "", "")
            for i, r in enumerate(records)
        ]


def record(n: int) -> NewAudit:
    return NewAudit(f"test.r{n}", None, None, None, {"n": n})


async def test_concurrent_records_are_committed_together_in_order() -> None:
    ledger = Ledger()
    group = GroupCommit(ledger.commit)
    entries = await asyncio.gather(*(group.submit(record(n)) for n in range(10)))
    assert [e.seq for e in entries] == list(range(1, 11))
    assert len(ledger.batches) < 10 and sum(map(len, ledger.batches)) == 10
    await group.close()


async def test_a_failed_batch_fails_its_own_records_only() -> None:
    ledger = Ledger()
    group = GroupCommit(ledger.commit)
    ledger.fail_next = True
    first = await asyncio.gather(
        group.submit(record(1)), group.submit(record(2)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in first)
    assert (await group.submit(record(3))).type == "test.r3"
    assert ledger.batches == [["test.r3"]]


async def test_a_cancelled_caller_does_not_take_others_down() -> None:
    ledger = Ledger()
    group = GroupCommit(ledger.commit)
    impatient = asyncio.create_task(group.submit(record(1)))
    patient = asyncio.create_task(group.submit(record(2)))
    await asyncio.sleep(0)
    impatient.cancel()
    assert (await patient).type == "test.r2"
    await group.close()
    assert ledger.batches == [["test.r1", "test.r2"]]  # committed all the same


async def test_a_bad_record_is_refused_before_it_joins_a_batch(store: SessionStore) -> None:
    good = [store.audit("test.ok", None, None, None, {"n": n}) for n in range(5)]
    bad = store.audit("test.bad", None, None, None, {"n": 2**60})
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert isinstance(results[-1], ValueError)
    assert [r.seq for r in results[:-1] if isinstance(r, AuditEntry)] == [1, 2, 3, 4, 5]
    with pytest.raises(TypeError):
        await store.audit("test.bad", None, None, None, {"x": {1, 2}})
    assert (await store.verify_audit()).checked == 5
