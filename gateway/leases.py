"""Background duties on exactly one replica, through PostgreSQL advisory locks (gateway).

Beside the request path: the gateway's periodic duties (confirmation expiry, notification
polling, crash recovery, retention, mail polling, delivery) must run on one replica at a time.
Each duty has a lease: a session-level ``pg_try_advisory_lock`` on one dedicated connection
per replica, keyed by the duty's name (and the store's schema, so gateways on different
schemas of one database never contend). The holder keeps its lease as long as its connection
lives; when the process dies, PostgreSQL ends the session and releases the lock, and another
replica, retrying every ``retry_seconds``, takes it on its next try. The failover bound is
therefore ``retry_seconds`` plus the duty's own period after the holder's connection is gone
(at once for a killed process; for a holder cut off by the network, when PostgreSQL's TCP
keepalives, set on the lease connection, give up: about 30 s). A holder that cannot reach the
database stops running its duties until it holds the lease again. On SQLite the gateway is
one process, and every lease is always held.

Adding a duty (the only place is ``gateway/app.py``'s ``_duties``)::

    gateway.tasks.append(
        asyncio.create_task(gateway.leases.every("mail.poll", settings.mail.poll_seconds, poll))
    )

``every(name, seconds, duty)`` runs ``duty()`` every ``seconds`` while this replica holds
``name``; a failure is logged and the loop goes on. ``while_held(name, run)`` is for a duty
that is one endless loop (the email channel's IDLE): started when the lease is taken,
cancelled when it is lost. Use one name per duty; a duty that must run
in every process (the policy file's reload) does not take a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

KEEPALIVES: Final = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}
"""Server-side keepalives on the lease connection: a holder cut off by the network loses its
locks after about 10 + 5 * 3 s instead of the kernel's two hours."""


CHECK_TIMEOUT: Final = 10.0
"""Longest a lease check may take before the connection counts as lost."""


def lease_key(name: str, namespace: str = "") -> int:
    """The advisory lock key of a duty: 64 bits of sha256 over ``goodbot:<namespace>:<name>``."""
    digest = hashlib.sha256(f"goodbot:{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leases:
    """This replica's duty leases (one advisory lock per duty on one dedicated connection)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        namespace: str = "",
        retry_seconds: float = 2.0,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        """Args:
        engine: The store's engine; leases are real only on PostgreSQL.
        namespace: Mixed into every key (the store's schema), so that gateways on different
            schemas of one database keep separate leases.
        retry_seconds: How often a replica without a lease tries to take it.
        on_change: Called with (duty, held) whenever this replica takes or loses a lease.
        """
        self.engine = engine
        self.namespace = namespace
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self.shared = engine.dialect.name == "postgresql"
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        """This process, as the lease connection's ``application_name`` shows it."""
        self._conn: AsyncConnection | None = None
        self._held: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def held(self) -> frozenset[str]:
        """The duties this replica holds now."""
        return frozenset(self._held)

    async def hold(self, name: str) -> bool:
        """Whether this replica holds ``name`` now, taking it if it is free.

        A lease already held is confirmed by a round trip on its connection, so a replica
        whose connection broke finds out here and stops acting on the lease.
        """
        if not self.shared:
            self._note(name, True)
            return True
        async with self._lock:
            try:
                # A round trip that hangs (the database cut off) counts as a lost connection.
                async with asyncio.timeout(CHECK_TIMEOUT):
                    return await self._take(name)
            except Exception as exc:  # the connection is gone: so is every lease on it
                log.warning(
                    "lease connection failed; holding no duties",
                    extra={"duty": name, "error": type(exc).__name__},
                )
                await self._drop()
                return False

    async def _take(self, name: str) -> bool:
        conn = await self._connection()
        if name in self._held:
            await conn.execute(text("SELECT 1"))
            return True
        result = await conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": lease_key(name, self.namespace)}
        )
        taken = bool(result.scalar_one())
        self._note(name, taken)
        return taken

    async def every(self, name: str, seconds: float, duty: Callable[[], Awaitable[Any]]) -> None:
        """Run ``duty`` every ``seconds`` while this replica holds ``name``; until cancelled.

        Without the lease it asks again every ``retry_seconds`` (or ``seconds``, if sooner),
        and runs the duty as soon as it gets it. A failing duty is logged, not fatal.
        """
        while True:
            if not await self.hold(name):
                await asyncio.sleep(min(self.retry_seconds, seconds))
                continue
            await asyncio.sleep(seconds)
            if not await self.hold(name):
                continue
            try:
                await duty()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background duty failed", extra={"duty": name})

    async def while_held(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run the long-lived ``run`` while this replica holds lease ``name``; until cancelled.

        For a duty that is one endless loop (the mailbox's IDLE) rather than a periodic call: it is
        started when the lease is taken and cancelled as soon as the lease is lost.
        """
        while True:
            if not await self.hold(name):
                await asyncio.sleep(self.retry_seconds)
                continue
            task = asyncio.create_task(run())
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=self.retry_seconds)
                    if not task.done() and not await self.hold(name):
                        break
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error(
                        "duty ended with an error", extra={"duty": name}, exc_info=task.exception()
                    )
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await asyncio.sleep(self.retry_seconds)

    async def close(self) -> None:
        """Release every lease (by closing the connection) so another replica takes over."""
        async with self._lock:
            await self._drop()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = await self.engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                # Named, so an operator finds the holders in pg_stat_activity.
                settings = {**KEEPALIVES, "application_name": f"goodbot-leases {self.replica}"}
                for setting, value in settings.items():
                    await conn.execute(
                        text("SELECT set_config(:name, :value, false)"),
                        {"name": setting, "value": value},
                    )
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        for name in list(self._held):
            self._note(name, False)
        if conn is not None:
            # Never back into the pool with session locks: close the DBAPI connection itself.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    def _note(self, name: str, held: bool) -> None:
        if held == (name in self._held):
            return
        if held:
            self._held.add(name)
            log.info("duty lease taken", extra={"duty": name})
        else:
            self._held.discard(name)
            log.info("duty lease lost", extra={"duty": name})
        if self.on_change is not None:
            self.on_change(name, held)
