"""Duty leases and the shared rate limit on the real PostgreSQL server (and SQLite)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.leases import Leases, lease_key
from sessions.db import Database, create_engine, migrate
from sessions.ratelimit import SharedRateLimiter
from tests.conftest import PG_URL

ASYNC_PG_URL = PG_URL.replace("postgresql://", "postgresql+asyncpg://")


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A migrated PostgreSQL schema of the test's own (dropped afterwards)."""
    name = f"gblease_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")  # our own generated identifier
    finally:
        await conn.close()
    engine = create_engine(ASYNC_PG_URL, name)
    await migrate(engine)
    await engine.dispose()
    try:
        yield name
    finally:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA {name} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def engines(schema: str) -> AsyncIterator[list[AsyncEngine]]:
    """Two engines on the schema, as two replicas would have."""
    made = [create_engine(ASYNC_PG_URL, schema) for _ in range(2)]
    try:
        yield made
    finally:
        for engine in made:
            await engine.dispose()


@pytest.mark.postgres
async def test_one_replica_holds_a_duty_and_the_other_takes_it_when_released(
    engines: list[AsyncEngine], schema: str
) -> None:
    first, second = (Leases(e, namespace=schema) for e in engines)
    assert await first.hold("confirmations.expiry")
    assert not await second.hold("confirmations.expiry")
    assert await first.hold("confirmations.expiry")  # still held, confirmed by a round trip
    assert await second.hold("notifications.poll")  # another duty is another lease
    await first.close()
    assert first.held == frozenset()
    assert await second.hold("confirmations.expiry")
    assert second.held == {"confirmations.expiry", "notifications.poll"}
    await second.close()


@pytest.mark.postgres
async def test_a_holder_whose_connection_dies_loses_the_lease_to_the_other(
    engines: list[AsyncEngine], schema: str
) -> None:
    changes: list[tuple[str, bool]] = []
    first = Leases(engines[0], namespace=schema, on_change=lambda d, h: changes.append((d, h)))
    second = Leases(engines[1], namespace=schema)
    assert await first.hold("recovery")
    # The server ends the holder's session, as when its process or host dies.
    conn = await asyncpg.connect(PG_URL)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
            " WHERE locktype = 'advisory' AND objid = ($1::bigint & 4294967295)::oid"
            " AND classid = (($1::bigint >> 32) & 4294967295)::oid",
            lease_key("recovery", schema),
        )
    finally:
        await conn.close()
    assert killed == 1
    for _ in range(50):
        if await second.hold("recovery"):
            break
        await asyncio.sleep(0.1)
    assert "recovery" in second.held
    assert not await first.hold("recovery")  # finds out, reconnects, and the lease is taken
    assert changes == [("recovery", True), ("recovery", False)]
    await first.close()
    await second.close()


@pytest.mark.postgres
async def test_every_runs_the_duty_only_on_the_holder(
    engines: list[AsyncEngine], schema: str
) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0}
    leases = [Leases(e, namespace=schema, retry_seconds=0.05) for e in engines]

    def duty(name: str) -> object:
        async def run() -> None:
            runs[name] += 1

        return run

    tasks = [
        asyncio.create_task(lease.every("retention", 0.02, duty(n)))  # type: ignore[arg-type]
        for lease, n in zip(leases, "ab", strict=True)
    ]
    for _ in range(100):
        if sum(runs.values()) >= 5:
            break
        await asyncio.sleep(0.05)
    assert sum(runs.values()) >= 5
    assert min(runs.values()) == 0  # exactly one of the two ran it
    holder = 0 if runs["a"] else 1
    await leases[holder].close()
    tasks[holder].cancel()
    before = dict(runs)
    other = "ba"[holder]
    for _ in range(100):
        if runs[other] > before[other]:
            break
        await asyncio.sleep(0.05)
    assert runs[other] > before[other]
    tasks[1 - holder].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await leases[1 - holder].close()


@pytest.mark.postgres
async def test_a_long_lived_duty_runs_on_one_replica_and_moves_when_it_dies(
    engines: list[AsyncEngine], schema: str
) -> None:
    running: set[str] = set()
    started: list[str] = []

    def loop(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:  # like the mailbox's IDLE: never returns by itself
            running.add(name)
            started.append(name)
            try:
                await asyncio.sleep(3600)
            finally:
                running.discard(name)

        return run

    leases = [Leases(e, namespace=schema, retry_seconds=0.05) for e in engines]
    tasks = [
        asyncio.create_task(lease.while_held("email.mailbox", loop(n)))
        for lease, n in zip(leases, "ab", strict=True)
    ]
    for _ in range(100):
        if running:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert len(running) == 1 and len(started) == 1  # one replica reads the mailbox
    holder = "ab".index(started[0])
    # The holder's database session ends (its process died): its loop stops, the other's starts.
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
            " WHERE locktype = 'advisory' AND objid = ($1::bigint & 4294967295)::oid"
            " AND classid = (($1::bigint >> 32) & 4294967295)::oid",
            lease_key("email.mailbox", schema),
        )
    finally:
        await conn.close()
    other = "ba"[holder]
    for _ in range(100):
        if other in running:
            break
        await asyncio.sleep(0.05)
    assert other in running
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert running == set()
    for lease in leases:
        await lease.close()


async def test_on_sqlite_every_lease_is_held(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'one.db'}")
    try:
        leases = Leases(engine)
        assert not leases.shared
        assert await leases.hold("confirmations.expiry")
        assert leases.held == {"confirmations.expiry"}
        with pytest.raises(ValueError, match="PostgreSQL"):
            SharedRateLimiter(Database(engine))
    finally:
        await engine.dispose()


def test_lease_keys_differ_by_duty_and_namespace() -> None:
    keys = {lease_key(d, n) for d in ("recovery", "retention") for n in ("", "a", "b")}
    assert len(keys) == 6
    assert all(-(2**63) <= k < 2**63 for k in keys)


@pytest.mark.postgres
async def test_the_shared_rate_holds_across_replicas(engines: list[AsyncEngine]) -> None:
    limiters = [SharedRateLimiter(Database(e)) for e in engines]
    key = f"message:{uuid.uuid4().hex}"
    waits = await asyncio.gather(*(limiters[i % 2].take(key, 4) for i in range(10)))
    assert sum(w is None for w in waits) == 4
    refused = [w for w in waits if w is not None]
    assert all(w >= 1 for w in refused)
    assert await limiters[0].take(f"message:{uuid.uuid4().hex}", 4) is None  # other key
