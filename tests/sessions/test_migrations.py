"""Storage: the gateway's migrations build exactly the models' schema, beside the control plane."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import String, column, inspect, select, table, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from sessions.db import VERSION_TABLE, alembic_config, create_engine, include_name, migrate
from sessions.models import Base
from tests.sessions.conftest import ASYNC_PG_URL, pg_execute


@pytest.fixture
async def empty(backend: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a database (or PostgreSQL schema) nothing has touched yet."""
    if backend == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        await engine.dispose()
        return
    schema = f"gbmig_{uuid.uuid4().hex[:12]}"
    await pg_execute(f"CREATE SCHEMA {schema}")
    engine = create_engine(ASYNC_PG_URL, schema)
    try:
        yield engine
    finally:
        await engine.dispose()
        await pg_execute(f"DROP SCHEMA {schema} CASCADE")


def _diff(connection: Connection) -> list[Any]:
    opts = {"include_name": include_name, "version_table": VERSION_TABLE}
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_the_migrated_schema_matches_the_models(empty: AsyncEngine) -> None:
    await migrate(empty)
    await migrate(empty)  # a second start finds nothing to do
    async with empty.connect() as conn:
        assert await conn.run_sync(_diff) == []
        tables = await conn.run_sync(_tables)
        versions = select(column("version_num", String)).select_from(table(VERSION_TABLE))
        version = (await conn.execute(versions)).scalars().all()
    assert tables == set(Base.metadata.tables) | {VERSION_TABLE}
    assert list(version) == [ScriptDirectory.from_config(alembic_config()).get_current_head()]


async def test_the_gateway_migrates_beside_the_control_planes_tables(empty: AsyncEngine) -> None:
    # The control plane's own history and tables, as they look in a shared database.
    async with empty.begin() as conn:
        await conn.execute(
            text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        )
        await conn.execute(text("INSERT INTO alembic_version VALUES ('0002')"))
        await conn.execute(text("CREATE TABLE chain_heads (tenant_id VARCHAR(40) PRIMARY KEY)"))
    await migrate(empty)
    async with empty.connect() as conn:
        assert await conn.run_sync(_diff) == []
        theirs = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        tables = await conn.run_sync(_tables)
    assert theirs == "0002"
    assert {"alembic_version", "chain_heads", VERSION_TABLE} <= tables
