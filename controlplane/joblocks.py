"""Control plane: which replica runs a tenant's recompute, through PostgreSQL advisory locks.

A worker takes the tenant's session-level ``pg_try_advisory_lock`` on its own connection
before it claims the tenant's jobs and holds it until they are finished. So a job marked
``running`` whose tenant lock is free belongs to no live worker: its replica died, and the job
can be queued again (a recompute is idempotent). The lock goes when the holder's session
ends, at once for a killed process. On SQLite there is one process and no lock is needed:
every ``try_lock`` succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

NAMESPACE: Final = "goodbot-cp:recompute"


def lock_key(tenant_id: str, schema: str | None) -> int:
    """The advisory lock key of a tenant's recompute (64 bits of sha256, signed)."""
    digest = hashlib.sha256(f"{NAMESPACE}:{schema or ''}:{tenant_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TenantLocks:
    """Tenant recompute locks held on one dedicated connection (PostgreSQL), or none (SQLite)."""

    def __init__(self, conn: AsyncConnection | None, schema: str | None) -> None:
        self._conn = conn
        self._schema = schema

    async def try_lock(self, tenant_id: str) -> bool:
        """Take the tenant's lock if no other session holds it."""
        if self._conn is None:
            return True
        result = await self._conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(tenant_id, self._schema)}
        )
        return bool(result.scalar_one())

    async def unlock(self, tenant_id: str) -> None:
        """Release the tenant's lock taken by ``try_lock``."""
        if self._conn is not None:
            await self._conn.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(tenant_id, self._schema)}
            )


@contextlib.asynccontextmanager
async def tenant_locks(engine: AsyncEngine, schema: str | None) -> AsyncIterator[TenantLocks]:
    """Locks on a connection of their own, released (with it) when the block ends."""
    if engine.dialect.name != "postgresql":
        yield TenantLocks(None, schema)
        return
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            yield TenantLocks(conn, schema)
        finally:
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock_all()"))
