"""Readiness follows the schema: a replica started before ``goodbot migrate`` is not ready."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from gateway.settings import DatabaseSettings
from sessions.db import create_engine, head_revision, migrate
from tests.conftest import PG_URL
from tests.e2e.harness import running_gateway

ASYNC_PG_URL = PG_URL.replace("postgresql://", "postgresql+asyncpg://")


@pytest.mark.postgres
async def test_a_replica_is_ready_only_once_its_schema_is_migrated(tmp_path: Path) -> None:
    schema = f"gbready_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f"CREATE SCHEMA {schema}")  # our own generated identifier
    try:
        database = DatabaseSettings(url=ASYNC_PG_URL, schema_name=schema, migrate_on_start=False)
        async with running_gateway(
            tmp_path / "gw", "http://127.0.0.1:9", "unused", database=database
        ) as gw:
            status, body = await gw.get("/readyz")
            assert status == 503
            assert body["checks"]["database"] == (
                f"failing: schema at None, needs {head_revision()} (migrate)"
            )
            engine = create_engine(ASYNC_PG_URL, schema)  # what `goodbot migrate` does
            try:
                await migrate(engine)
            finally:
                await engine.dispose()
            status, body = await gw.get("/readyz")
            assert body["checks"]["database"] == "ok"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
