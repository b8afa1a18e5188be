"""The gateway on PostgreSQL: the same confirmation guarantees as on SQLite, end to end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.settings import DatabaseSettings
from tests.conftest import PG_URL
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_cli_confirmations import cp_rollout, propose_chrome

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_gateway(demo_cp: DemoControlPlane, tmp_path: Path) -> AsyncIterator[GatewayUnderTest]:
    """A gateway whose store is a fresh PostgreSQL schema (dropped afterwards)."""
    schema = f"gbgw_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")  # our own generated identifier
    finally:
        await conn.close()
    database = DatabaseSettings(
        url=PG_URL.replace("postgresql://", "postgresql+asyncpg://"), schema_name=schema
    )
    try:
        async with running_gateway(
            tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, database=database
        ) as gw:
            yield gw
    finally:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


async def test_concurrent_confirmations_execute_once_on_postgres(
    pg_gateway: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    gw = pg_gateway
    assert gw.gateway.store.engine.dialect.name == "postgresql"
    pending = await gw.turn("ana", "what is pending my approval?")
    assert "zoom" in pending.reply
    confirmation = await propose_chrome(gw)
    results = await asyncio.gather(*(gw.decide("ana", str(confirmation["id"])) for _ in range(6)))
    outcomes = sorted(body["outcome"] for _, body in results)
    assert outcomes.count("confirmed") == 1 and outcomes.count("already_decided") == 5
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    check = await gw.gateway.store.verify_audit()
    assert check.ok and check.checked >= 6
