"""Sessions, beside the request path: group commit for stand-alone audit records.

Every turn audits several things (the message, the decision, each tool call, the reply) that
have no transaction of their own to join. Each in its own transaction would queue every
appender on the one chain head; instead, records submitted while a commit is in flight wait
and go together in the next one, one head move per batch. ``submit`` returns only once its
record is committed, so nothing acknowledged is lost. No background task outlives a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from sessions.audit import NewAudit
from sessions.results import AuditEntry

log = logging.getLogger(__name__)

MAX_BATCH: Final = 500
"""Most records committed in one transaction."""

Commit = Callable[[Sequence[NewAudit]], Awaitable[list[AuditEntry]]]


class GroupCommit:
    """Batches concurrent ``submit`` calls into as few ``commit`` calls as the load allows."""

    def __init__(self, commit: Commit) -> None:
        """Commit batches with ``commit``, which appends the records in one transaction."""
        self._commit = commit
        self._waiting: list[tuple[NewAudit, asyncio.Future[AuditEntry]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, record: NewAudit) -> AuditEntry:
        """Append ``record`` with whatever else is waiting; returns once it is committed.

        Raises:
            Exception: whatever the batch's commit raised (the batch is then not stored).
        """
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((record, done))
        if self._drain is None:
            # A task of its own, so a caller's cancellation never aborts others' records.
            self._drain = asyncio.create_task(self._run(), name="sessions-audit-group-commit")
        return await asyncio.shield(done)

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    entries = await self._commit([record for record, _ in batch])
                except Exception as exc:
                    log.exception("audit batch failed", extra={"records": len(batch)})
                    _fail(batch, exc)
                    continue
                except BaseException:
                    # Cancelled (the loop is shutting down): nobody will commit these.
                    _fail(batch + self._waiting, RuntimeError("audit commit was cancelled"))
                    self._waiting = []
                    raise
                for (_, done), entry in zip(batch, entries, strict=True):
                    if not done.done():
                        done.set_result(entry)
        finally:
            self._drain = None

    async def close(self) -> None:
        """Wait for the batch in flight, if any."""
        if self._drain is not None:
            await self._drain


def _fail(batch: list[tuple[NewAudit, asyncio.Future[AuditEntry]]], exc: BaseException) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)
