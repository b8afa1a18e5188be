"""Shared fixtures: a real control plane on loopback over SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

PG_URL = os.environ.get("GOODBOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server the suite uses (asyncpg DSN); CI machines run one at this address."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if "[postgres" in item.nodeid:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema private to this test session, dropped at the end."""
    schema = f"gbtest_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    yield schema
    asyncio.run(run(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each database-backed test runs on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "cp"


@pytest.fixture
def cp_env(
    backend: str, data_dir: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment for a control plane on the chosen backend."""
    env = {
        "GOODBOT_CP_DATA_DIR": str(data_dir),
        "GOODBOT_CP_BOOTSTRAP_TOKEN": "boot-" + uuid.uuid4().hex,
        # Test receivers listen on loopback; test_webhooks checks the guard with this off.
        "GOODBOT_CP_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        # The fleet simulator changes inventories on its own; tests that want it turn it on.
        "GOODBOT_CP_SIMULATOR_ENABLED": "false",
    }
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        env["GOODBOT_CP_DATABASE_URL"] = PG_URL.replace("postgresql://", "postgresql+asyncpg://")
        env["GOODBOT_CP_DATABASE_SCHEMA"] = schema
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
async def cp(cp_env: dict[str, str]) -> AsyncIterator[object]:
    from tests.controlplane.client import start_control_plane

    async with start_control_plane(cp_env) as handle:
        yield handle


# The demo control plane as a process (``tests/demo.py``): demo_template, demo_cp, shared_demo_cp.
pytest_plugins = ["tests.demo"]
