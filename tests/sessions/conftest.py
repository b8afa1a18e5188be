"""Session store fixtures: a migrated store per test on a temp SQLite file or a PostgreSQL schema.

Each backend is migrated once per test session; every test then starts from empty tables (a
copy of the migrated SQLite file, or truncated tables in a schema of its own on PostgreSQL).
The control plane's shared ``pg_schema`` is not used: its migration test compares that whole
schema with the control plane's models and would see the gateway's tables there.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from sessions.db import create_engine, migrate
from sessions.models import Base
from sessions.store import SessionStore
from tests.conftest import PG_URL

ASYNC_PG_URL = PG_URL.replace("postgresql://", "postgresql+asyncpg://")


@dataclass(frozen=True)
class Target:
    """Where a test's store lives; ``open`` gives another store on it, as after a restart."""

    url: str
    """SQLAlchemy URL."""
    schema: str | None
    """PostgreSQL schema, None on SQLite."""

    async def open(self) -> SessionStore:
        """A new store on this database, as a restarted process would open it."""
        return await SessionStore.open(self.url, schema=self.schema, migrate_schema=False)


async def _migrate(url: str, schema: str | None) -> None:
    engine = create_engine(url, schema)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def pg_execute(sql: str) -> None:
    """Run SQL on the test PostgreSQL server outside any store."""
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite database to copy for each test."""
    path = tmp_path_factory.mktemp("sessions") / "template.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}", None))
    return path


@pytest.fixture(scope="session")
def sessions_pg_schema() -> Iterator[str]:
    """A migrated PostgreSQL schema for this test session's session-store tests."""
    schema = f"gbsess_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_execute(f"CREATE SCHEMA {schema}"))
    asyncio.run(_migrate(ASYNC_PG_URL, schema))
    yield schema
    asyncio.run(pg_execute(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def location(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """A migrated database on the test's backend (resolved outside the event loop)."""
    if backend == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return Target(f"sqlite+aiosqlite:///{path}", None)
    return Target(ASYNC_PG_URL, request.getfixturevalue("sessions_pg_schema"))


@pytest.fixture
async def target(location: Target) -> Target:
    """An empty, migrated database on the test's backend."""
    if location.schema is not None:
        # DELETE, children first: on a handful of rows far quicker than TRUNCATE.
        tables = reversed(Base.metadata.sorted_tables)
        # Identifiers from our own metadata and fixture, not from input.
        sql = ";".join(f"DELETE FROM {location.schema}.{t.name}" for t in tables)  # noqa: S608
        await pg_execute(sql)
    return location


@pytest.fixture
async def store(target: Target) -> AsyncIterator[SessionStore]:
    """A session store on empty tables, closed after the test."""
    opened = await target.open()
    yield opened
    await opened.close()
