"""Control plane audit writer: group commit for events that stand alone (not part of a change).

An event that records a state change is appended inside that change's transaction. Events
that record only a decision (an enforcement check, a refused request) have no transaction of
their own to join; writing each in its own transaction costs several database round trips, so
concurrent appends are gathered and committed together, one chain-head move per batch. Each
caller's ``append`` returns only after its event is committed, so nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from controlplane.events import NewEvent, append_events
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

MAX_BATCH: Final = 500
"""Most events committed in one transaction."""


@dataclass
class _Pending:
    tenant_id: str
    event: NewEvent
    done: asyncio.Future[None]


@dataclass
class AuditWriter:
    """Commits queued events in batches; one instance per service, started by ``run``."""

    state: ServiceState
    _queue: asyncio.Queue[_Pending | None] = field(default_factory=asyncio.Queue)

    async def append(self, tenant_id: str, event: NewEvent) -> None:
        """Queue one event and wait until it is committed (raises if the commit failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(tenant_id, event, done))
        await done

    async def run(self) -> None:
        """Commit whatever has queued up, batch after batch, until ``close`` is called."""
        closing = False
        while not closing:
            first = await self._queue.get()
            batch = [] if first is None else [first]
            closing = first is None
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                else:
                    batch.append(item)
            if batch:
                await self._commit(batch)

    def close(self) -> None:
        """Ask ``run`` to commit what is queued and return."""
        self._queue.put_nowait(None)

    async def _commit(self, batch: list[_Pending]) -> None:
        by_tenant: dict[str, list[_Pending]] = defaultdict(list)
        for item in batch:
            by_tenant[item.tenant_id].append(item)
        try:
            async with self.state.writing() as session:
                for tenant_id, items in by_tenant.items():
                    await append_events(session, tenant_id, [i.event for i in items])
        except Exception as exc:
            # The writer's outermost layer: every waiter learns its event was not stored.
            log.exception("audit batch failed", extra={"events": len(batch)})
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)


@contextlib.asynccontextmanager
async def running(state: ServiceState) -> AsyncIterator[AuditWriter]:
    """An ``AuditWriter`` whose batch loop runs for the duration of the block."""
    writer = AuditWriter(state)
    task = asyncio.create_task(writer.run(), name="audit-writer")
    state.audit = writer
    try:
        yield writer
    finally:
        state.audit = None
        writer.close()  # commits what is still queued: an awaited append is never dropped
        await task


async def audit_worker(state: ServiceState) -> AsyncIterator[None]:
    """The writer as a service background duty (an aiohttp cleanup context)."""
    async with running(state):
        yield
