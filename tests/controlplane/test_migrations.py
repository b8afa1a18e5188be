"""Storage: the Alembic migrations produce exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

import controlplane.models_release  # noqa: F401  (registers the part II tables)
from controlplane.models import Base
from tests.controlplane.client import ControlPlane


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrated_schema_matches_models(cp: ControlPlane) -> None:
    async with cp.state.engine.connect() as connection:
        tables = await connection.run_sync(_tables)
        diff = await connection.run_sync(_diff)
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    assert diff == []
