"""Control plane execution planes: the background loop that drives the fleet simulator.

Every ``simulator_tick_seconds``, or at once after ``state.wake("simulator")``, one ``tick``
publishes the current ring of each active rollout through the ``TaskRunner`` (key
``publish:{intent_id}:{ring}``, so a promotion publishes the next ring and nothing is
published twice), then lets the simulator resolve due installs. Both steps use short write
transactions: SQLite has one writer, and requests must not wait behind a whole tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from controlplane.connectors import DeviceRef, Intent, TaskRunner
from controlplane.connectors.simulator import ACTOR, FleetSimulator, publish_key
from controlplane.connectors.targeting import load_intent, target_devices
from controlplane.models import utcnow
from controlplane.models_release import ConnectorTask, DeploymentIntent, Rollout
from controlplane.state import ServiceState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one simulator tick did."""

    publishes: int
    """Publish calls that reached the simulator (not answered from a stored task)."""
    assigned: int
    """Devices newly assigned by them."""
    succeeded: int
    """Installs that succeeded."""
    failed: int
    """Installs that failed."""


async def tick(
    state: ServiceState,
    simulator: FleetSimulator,
    runner: TaskRunner,
    *,
    now: datetime | None = None,
) -> TickReport:
    """One simulator step: publish each active rollout's current ring, then advance installs.

    A rollout is published when its intent is active and it is not Paused; the publish key
    names the ring, so a promotion publishes the next ring and nothing is published twice.
    """
    now = now or utcnow()
    correlation_id = f"sim-tick-{uuid.uuid4().hex[:12]}"
    todo: list[tuple[str, Intent, list[DeviceRef]]] = []
    async with state.sessions() as session:
        rollouts = (
            await session.execute(
                select(Rollout.intent_id, Rollout.ring)
                .join(DeploymentIntent, DeploymentIntent.id == Rollout.intent_id)
                .where(DeploymentIntent.state == "active", Rollout.status != "Paused")
                .order_by(Rollout.intent_id)
            )
        ).all()
        keys = {publish_key(intent_id, ring): intent_id for intent_id, ring in rollouts}
        settled: set[str] = set()
        if keys:
            done = await session.execute(
                select(ConnectorTask.idempotency_key).where(
                    ConnectorTask.idempotency_key.in_(list(keys)),
                    ConnectorTask.status != "pending",
                )
            )
            settled.update(done.scalars())
        for key, intent_id in keys.items():
            if key in settled:
                continue
            intent = await load_intent(session, intent_id)
            if intent is not None:
                todo.append((key, intent, await target_devices(session, intent)))
    publishes = assigned = 0
    for key, intent, devices in todo:
        outcome = await runner.publish(
            intent, devices, key=key, actor=ACTOR, correlation_id=correlation_id, now=now
        )
        if not outcome.replayed:
            publishes += 1
            assigned += outcome.result.assigned if outcome.result is not None else 0
    advanced = await simulator.advance(now=now)
    return TickReport(publishes, assigned, advanced.succeeded, advanced.failed)


async def _run_forever(state: ServiceState) -> None:
    simulator = FleetSimulator(state)
    runner = TaskRunner(state, simulator)
    wake = state.wakeups.setdefault("simulator", asyncio.Event())
    while True:
        # The first tick waits one interval, so a freshly started service serves first.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(state.settings.simulator_tick_seconds):
                await wake.wait()
        wake.clear()
        try:
            report = await tick(state, simulator, runner)
        except Exception:
            # The worker's outermost layer: a database hiccup must not stop the fleet for good.
            log.exception("fleet simulator tick failed; retrying next tick")
            continue
        if report.publishes or report.succeeded or report.failed:
            log.info(
                "fleet simulator tick",
                extra={
                    "publishes": report.publishes,
                    "assigned": report.assigned,
                    "succeeded": report.succeeded,
                    "failed": report.failed,
                },
            )


async def simulator_worker(state: ServiceState) -> AsyncIterator[None]:
    """Background duty (an aiohttp cleanup context): run the fleet simulator while serving.

    Does nothing when ``settings.simulator_enabled`` is off.
    """
    if not state.settings.simulator_enabled:
        yield
        return
    task = asyncio.create_task(_run_forever(state), name="fleet-simulator")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
