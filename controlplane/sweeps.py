"""Control plane sweeps: periodic duties that turn the passage of time into events.

Two duties: approved risk exceptions that expire within a week (or already have) get one
``exception_expiring`` event each, so the gateway can tell their owners before the gate closes;
and expired idempotency keys are deleted (``idempotency.TTL`` after their request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select

from controlplane.catalog import flag_expiring_exceptions
from controlplane.idempotency import purge_expired
from controlplane.models import Tenant, utcnow
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

EXPIRY_NOTICE: Final = timedelta(days=7)
"""How long before expiry an exception is announced."""
SWEEP_SECONDS: Final = 60.0
"""How often the sweep runs."""


async def sweep_once(state: ServiceState, now: datetime | None = None) -> int:
    """Run every sweep once for every tenant; returns the number of events appended."""
    now = now or utcnow()
    async with state.sessions() as session:
        tenants = list((await session.execute(select(Tenant.id))).scalars())
    flagged = 0
    for tenant_id in tenants:
        async with state.writing() as session:
            flagged += await flag_expiring_exceptions(session, tenant_id, now, EXPIRY_NOTICE)
    async with state.writing() as session:
        purged = await purge_expired(session, now)
    if purged:
        log.info("expired idempotency keys deleted", extra={"count": purged})
    return flagged


async def _run(state: ServiceState) -> None:
    while True:
        try:
            await sweep_once(state)
        except Exception:
            # The sweep's outermost layer: a failed pass is retried at the next one.
            log.exception("release sweep failed")
        await asyncio.sleep(SWEEP_SECONDS)


async def release_sweeper(state: ServiceState) -> AsyncIterator[None]:
    """The sweeps as a background duty (an aiohttp cleanup context)."""
    task = asyncio.create_task(_run(state), name="release-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
