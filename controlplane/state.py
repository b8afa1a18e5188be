"""Control plane service state: the collaborators every handler reaches through the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from controlplane.ratelimit import RateLimiter
from controlplane.settings import ControlPlaneSettings
from controlplane.signing import Signer


class AuditSink(Protocol):
    """Appends a stand-alone event and returns once it is committed."""

    async def append(self, tenant_id: str, event: Any) -> None: ...


@dataclass
class ServiceState:
    """Long-lived collaborators, created once by ``controlplane.app.create_app``."""

    settings: ControlPlaneSettings
    """The service's settings."""
    engine: AsyncEngine
    """Database engine."""
    sessions: async_sessionmaker[AsyncSession]
    """Session factory; one session per unit of work."""
    signer: Signer
    """The control plane's own Ed25519 key."""
    limiter: RateLimiter
    """Per-principal request limits."""
    policy_cache: dict[tuple[str, int, frozenset[str]], Any] = field(default_factory=dict)
    """Effective policies keyed by (tenant, policy revision, scope set)."""
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    """Events that background workers wait on (``webhooks``, ``recompute``)."""
    auth_cache: dict[tuple[str, str | None], tuple[float, Any]] = field(default_factory=dict)
    """(token hash, acted principal) → (monotonic expiry, Caller), see ``auth_cache_seconds``."""
    audit: AuditSink | None = None
    """Group-commit writer for stand-alone events; set while the service runs."""
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serializes write transactions on SQLite (unused on PostgreSQL)."""

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A session in a write transaction, committed on success, rolled back on error.

        SQLite allows one writer; a deferred transaction that reads and then writes fails with
        SQLITE_BUSY_SNAPSHOT when another connection committed in between, so writers queue on
        an in-process lock before their first statement. PostgreSQL needs no such lock.
        """
        lock = self.write_lock if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        async with lock, self.sessions.begin() as session:
            yield session

    def wake(self, name: str) -> None:
        """Nudge a background worker to look for work now."""
        self.wakeups.setdefault(name, asyncio.Event()).set()


STATE: Final = web.AppKey("state", ServiceState)
