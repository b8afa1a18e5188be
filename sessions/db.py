"""Sessions, beside the request path: engine creation, SQLite tuning and the gateway's migrations.

The gateway keeps its own Alembic history in ``gateway_alembic_version`` so that it can share
a PostgreSQL database (even a schema) with the control plane, whose history lives in
``alembic_version``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from sessions.models import Base

VERSION_TABLE: Final = "gateway_alembic_version"
"""Alembic's version table for the gateway's schema history."""

MIGRATION_LOCK: Final = 0x676F_6F64_6277_0001
"""PostgreSQL advisory lock key held while migrating, so replicas starting together queue."""

_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while one writer commits; NORMAL sync is durable across
    # process crashes in WAL mode (only an OS crash can lose the last commits).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def async_url(url: str) -> str:
    """``url`` with its async driver: ``sqlite://`` → aiosqlite, ``postgresql://`` → asyncpg."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


def sqlite_url(data_dir: Path) -> str:
    """The default database: SQLite (WAL) at ``data_dir/gateway.db``."""
    return f"sqlite+aiosqlite:///{(data_dir / 'gateway.db').resolve()}"


def create_engine(url: str, schema: str | None = None) -> AsyncEngine:
    """An async engine for ``url`` with JSON through orjson and SQLite in WAL mode.

    Args:
        url: SQLAlchemy URL; a plain ``sqlite://`` or ``postgresql://`` gets its async driver.
        schema: PostgreSQL schema to use as the search path; ignored for SQLite.

    Raises:
        ValueError: ``schema`` is not a plain lower-case identifier.
    """
    url = async_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": orjson.loads}
    sqlite = url.startswith("sqlite")
    if sqlite:
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 10}
    else:
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 10
        if schema is not None:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError(f"schema {schema!r} is not a lower-case identifier")
            kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(url, **kwargs)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    """Alembic filter: only the gateway's own tables, as the control plane may share the schema."""
    return type_ != "table" or name in Base.metadata.tables


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", "sessions:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Released when the migration transaction ends.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the gateway's tables to the newest migration."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


def head_revision() -> str | None:
    """The newest migration this code ships (what ``migrate`` brings the database to)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The gateway's migration revision in the database, None before the first migration."""

    def read(connection: Connection) -> str | None:
        from alembic.migration import MigrationContext

        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


def conflict_insert(conn: AsyncConnection, table: Table) -> pg.Insert | sqlite.Insert:
    """An INSERT for ``table`` in the connection's dialect, which offers ``ON CONFLICT``."""
    if conn.dialect.name == "postgresql":
        return pg.insert(table)
    return sqlite.insert(table)


class WriteLock:
    """A mutex whose urgent waiters go before the others, each queue first come first served.

    Written here because asyncio has no priority lock. Admitting a message is urgent: a
    channel acknowledges only after it, and Slack and Teams retry a slow acknowledgement, so
    it must not queue behind the writes of turns already running.
    """

    def __init__(self) -> None:
        self._held = False
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._other: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait for the lock; urgent callers are handed it before any other waiter."""
        if not self._held and not self._urgent and not self._other:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._other
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the lock just as the caller was cancelled
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the lock to the next waiter (urgent first), or free it."""
        for queue in (self._urgent, self._other):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._held = False

    @contextlib.asynccontextmanager
    async def held(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """Hold the lock for the block."""
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()


class Database:
    """An engine plus the write discipline every store in this package follows."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine made by ``create_engine``."""
        self.engine = engine
        self._write_lock = WriteLock() if engine.dialect.name == "sqlite" else None

    @contextlib.asynccontextmanager
    async def writing(self, *, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction, committed on success, rolled back on error.

        SQLite allows one writer; a deferred transaction that reads and then writes fails with
        SQLITE_BUSY_SNAPSHOT when another connection committed in between, so writers queue on
        an in-process lock before their first statement (``urgent`` ones first: admissions).
        PostgreSQL needs no such lock.
        """
        lock = (
            self._write_lock.held(urgent=urgent)
            if self._write_lock is not None
            else contextlib.nullcontext()
        )
        async with lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; SQLite in WAL mode reads beside a writer without waiting."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
