"""Execution-plane connectors: the task runner's idempotency, retries and error classes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from controlplane.connectors import (
    ConnectorError,
    Correlation,
    DeviceRef,
    InstallStatus,
    Intent,
    PermanentError,
    PolicyViolationError,
    Published,
    RemediateAction,
    Remediated,
    TaskRunner,
    TransientError,
)
from controlplane.errors import ConflictError
from controlplane.models import utcnow
from controlplane.models_release import ConnectorTask
from tests.controlplane.client import ControlPlane, Tenant


@pytest.fixture(autouse=True)
def _no_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests drive the runner themselves; the background simulator would only add noise.
    monkeypatch.setenv("GOODBOT_CP_SIMULATOR_ENABLED", "false")


Step = Exception | None
"""One scripted plane answer: raise this (a ConnectorError, or a bug), or (None) succeed."""


@dataclass
class ScriptedPlane:
    """A fake execution plane answering from a script; an unscripted call fails the test."""

    script: list[Step]
    name: str = "scripted"
    calls: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, each call waits for it (to hold a call in flight)."""
    called: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the first call."""

    async def _answer(self, operation: str, key: str) -> None:
        self.calls.append((operation, key))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        assert self.script, f"unscripted {operation} call with key {key!r}"
        step = self.script.pop(0)
        if step is not None:
            raise step

    async def publish(self, intent: Intent, devices: Sequence[DeviceRef], *, key: str) -> Published:
        await self._answer("publish", key)
        return Published(f"fake://{intent.id}/ring{intent.ring}", len(devices), 0)

    async def query(self, intent: Intent, *, key: str) -> InstallStatus:
        await self._answer("query", key)
        return InstallStatus(f"fake://{intent.id}/ring{intent.ring}", intent.ring, {"pending": 2})

    async def remediate(
        self,
        intent: Intent,
        devices: Sequence[DeviceRef] | None,
        action: RemediateAction,
        *,
        key: str,
    ) -> Remediated:
        await self._answer("remediate", key)
        return Remediated(f"fake://{intent.id}/{action}", action, len(devices or ()))

    async def correlate(self, intent: Intent, *, key: str) -> Correlation:
        await self._answer("correlate", key)
        return Correlation({"application": f"fake://apps/{intent.application}"})


DEVICES = [DeviceRef(f"dev_{n}", f"mac-{n}", "macos", "online", 0) for n in range(3)]


def intent_for(t: Tenant, intent_id: str = "int_connector_test") -> Intent:
    # ConnectorTask.intent_id is no foreign key: a runner needs no intent row to record a call.
    return Intent(
        id=intent_id,
        tenant_id=t.id,
        application_id="app_x",
        application="firefox",
        version_id="ver_x",
        version="134.0",
        target_scope_id=t.root,
        ring=0,
    )


async def task_row(cp: ControlPlane, key: str) -> ConnectorTask:
    async with cp.state.sessions() as session:
        row = await session.execute(
            select(ConnectorTask).where(ConnectorTask.idempotency_key == key)
        )
        return row.scalar_one()


async def connector_events(t: Tenant) -> list[dict[str, Any]]:
    body = (await t.owner.get("/api/v1/events", params={"type": "connector_task"})).ok()
    return list(body["items"])


async def test_a_repeated_key_answers_from_the_stored_task(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([None])
    runner = TaskRunner(cp.state, plane)
    intent = intent_for(t)

    first = await runner.publish(
        intent, DEVICES, key=f"publish:k1:{t.id}", actor="ana", correlation_id="c1"
    )
    again = await runner.publish(
        intent, DEVICES, key=f"publish:k1:{t.id}", actor="ana", correlation_id="c2"
    )

    assert plane.calls == [("publish", f"publish:k1:{t.id}")]
    assert first.status == again.status == "done"
    assert first.result == again.result == Published("fake://int_connector_test/ring0", 3, 0)
    assert (first.replayed, again.replayed) == (False, True)
    assert first.attempts == again.attempts == 1
    task = await task_row(cp, f"publish:k1:{t.id}")
    assert (task.status, task.connector, task.operation, task.attempts) == (
        "done",
        "scripted",
        "publish",
        1,
    )
    assert task.payload == {"devices": 3}
    (event,) = await connector_events(t)
    assert (event["action"], event["outcome"], event["actor"]) == (
        "connector.publish",
        "success",
        "ana",
    )
    assert event["correlation_id"] == "c1" and event["task_id"] == str(task.id)
    assert event["data"]["result"] == {
        "plane_ref": "fake://int_connector_test/ring0",
        "assigned": 3,
        "already_assigned": 0,
    }


async def test_every_operation_goes_through_the_runner(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([None, None, None])
    runner = TaskRunner(cp.state, plane)
    intent = intent_for(t)
    common: dict[str, Any] = {"actor": "ana", "correlation_id": "c"}

    queried = await runner.query(intent, key=f"query:1:{t.id}", **common)
    remediated = await runner.remediate(
        intent, None, "rollback", key=f"rollback:1:{t.id}", **common
    )
    correlated = await runner.correlate(intent, key=f"correlate:1:{t.id}", **common)

    assert queried.result == InstallStatus("fake://int_connector_test/ring0", 0, {"pending": 2})
    assert remediated.result == Remediated("fake://int_connector_test/rollback", "rollback", 0)
    assert correlated.result == Correlation({"application": "fake://apps/firefox"})
    assert [op for op, _ in plane.calls] == ["query", "remediate", "correlate"]
    assert (await task_row(cp, f"rollback:1:{t.id}")).payload == {
        "action": "rollback",
        "devices": None,
    }
    assert len(await connector_events(t)) == 3


async def test_a_transient_failure_is_retried_with_backoff(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([TransientError("throttled"), TransientError("503"), None])
    runner = TaskRunner(cp.state, plane, backoff_base_seconds=2.0)
    intent = intent_for(t)
    now = utcnow()

    async def publish(at: timedelta) -> Any:
        return await runner.publish(
            intent, DEVICES, key=f"publish:k2:{t.id}", actor="ana", correlation_id="c", now=now + at
        )

    first = await publish(timedelta(0))
    assert (first.status, first.attempts, first.error_class) == ("pending", 1, "transient")
    assert first.next_attempt_at == now + timedelta(seconds=2)
    # Not due yet: answered from the task, the plane is left alone.
    early = await publish(timedelta(seconds=1))
    assert (early.status, early.replayed, len(plane.calls)) == ("pending", True, 1)

    second = await publish(timedelta(seconds=2))
    assert (second.status, second.attempts) == ("pending", 2)
    assert second.next_attempt_at == now + timedelta(seconds=2 + 4)  # doubled
    assert await connector_events(t) == []  # only final outcomes are audited

    third = await publish(timedelta(seconds=6))
    assert (third.status, third.attempts, third.replayed) == ("done", 3, False)
    assert third.result is not None and third.result.assigned == 3
    assert (await publish(timedelta(seconds=60))).replayed
    assert len(plane.calls) == 3
    task = await task_row(cp, f"publish:k2:{t.id}")
    assert (task.status, task.error_class, task.last_error) == ("done", None, None)
    assert [e["outcome"] for e in await connector_events(t)] == ["success"]


async def test_transient_failures_become_final_after_max_attempts(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([TransientError("timeout"), TransientError("timeout, again")])
    runner = TaskRunner(cp.state, plane, max_attempts=2, backoff_base_seconds=1.0)
    now = utcnow()
    common: dict[str, Any] = {"key": f"publish:k3:{t.id}", "actor": "ana", "correlation_id": "c"}

    await runner.publish(intent_for(t), DEVICES, now=now, **common)
    last = await runner.publish(intent_for(t), DEVICES, now=now + timedelta(seconds=1), **common)

    assert (last.status, last.attempts, last.error_class) == ("failed", 2, "transient")
    assert last.error == "timeout, again" and last.next_attempt_at is None
    later = await runner.publish(intent_for(t), DEVICES, now=now + timedelta(hours=1), **common)
    assert (later.status, later.replayed, len(plane.calls)) == ("failed", True, 2)
    (event,) = await connector_events(t)
    assert event["outcome"] == "failure"
    assert event["data"]["error_class"] == "transient" and event["data"]["attempts"] == 2


async def test_the_plane_s_retry_after_outlasts_the_backoff(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([TransientError("429", retry_after=30.0, plane_code="429")])
    runner = TaskRunner(cp.state, plane, backoff_base_seconds=2.0)
    now = utcnow()
    outcome = await runner.publish(
        intent_for(t), DEVICES, key=f"publish:k4:{t.id}", actor="ana", correlation_id="c", now=now
    )
    assert outcome.next_attempt_at == now + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("error", "error_class"),
    [
        (PermanentError("no such app", plane_code="404"), "permanent"),
        (PolicyViolationError("scope outside the boundary"), "policy_violation"),
    ],
)
async def test_permanent_and_policy_failures_fail_at_once(
    cp: ControlPlane, error: ConnectorError, error_class: str
) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([error])
    runner = TaskRunner(cp.state, plane)
    common: dict[str, Any] = {"key": f"publish:k5:{t.id}", "actor": "ana", "correlation_id": "c"}

    failed = await runner.publish(intent_for(t), DEVICES, **common)
    assert (failed.status, failed.attempts, failed.error_class) == ("failed", 1, error_class)
    assert failed.error == error.message and failed.result is None

    again = await runner.publish(intent_for(t), DEVICES, now=utcnow() + timedelta(days=1), **common)
    assert (again.status, again.replayed, len(plane.calls)) == ("failed", True, 1)
    task = await task_row(cp, f"publish:k5:{t.id}")
    assert (task.status, task.error_class) == ("failed", error_class)
    (event,) = await connector_events(t)
    assert (event["outcome"], event["data"]["error_class"]) == ("failure", error_class)


async def test_a_key_reused_for_another_call_is_refused(cp: ControlPlane) -> None:
    t = await cp.tenant()
    runner = TaskRunner(cp.state, ScriptedPlane([None]))
    intent = intent_for(t)
    await runner.publish(intent, DEVICES, key=f"k6:{t.id}", actor="ana", correlation_id="c")
    with pytest.raises(ConflictError, match="used for another call"):
        await runner.query(intent, key=f"k6:{t.id}", actor="ana", correlation_id="c")
    with pytest.raises(ConflictError):
        await runner.publish(
            intent_for(t, "int_other"), DEVICES, key=f"k6:{t.id}", actor="a", correlation_id="c"
        )


async def test_concurrent_calls_with_one_key_reach_the_plane_once(cp: ControlPlane) -> None:
    t = await cp.tenant()
    gate = asyncio.Event()
    plane = ScriptedPlane([None], gate=gate)
    runner = TaskRunner(cp.state, plane)
    intent = intent_for(t)

    def publish() -> Any:
        return runner.publish(
            intent, DEVICES, key=f"publish:k7:{t.id}", actor="ana", correlation_id="c"
        )

    first = asyncio.create_task(publish())
    await plane.called.wait()
    # The first call is in flight, holding the task's lease: the second is told it is pending.
    second = await publish()
    assert (second.status, second.replayed) == ("pending", True)
    gate.set()
    assert (await first).status == "done"
    assert len(plane.calls) == 1


async def test_a_call_that_never_answered_is_retried_after_its_lease(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([RuntimeError("plane adapter bug"), None])
    runner = TaskRunner(cp.state, plane, max_attempts=2, lease_seconds=60.0)
    now = utcnow()
    common: dict[str, Any] = {"key": f"publish:k8:{t.id}", "actor": "ana", "correlation_id": "c"}

    with pytest.raises(RuntimeError):
        await runner.publish(intent_for(t), DEVICES, now=now, **common)
    held = await runner.publish(intent_for(t), DEVICES, now=now + timedelta(seconds=59), **common)
    assert (held.status, held.replayed, held.next_attempt_at) == (
        "pending",
        True,
        now + timedelta(seconds=60),
    )
    done = await runner.publish(intent_for(t), DEVICES, now=now + timedelta(seconds=60), **common)
    assert (done.status, done.attempts, len(plane.calls)) == ("done", 2, 2)


async def test_attempts_that_never_answered_count_towards_the_limit(cp: ControlPlane) -> None:
    t = await cp.tenant()
    plane = ScriptedPlane([RuntimeError("crash")])
    runner = TaskRunner(cp.state, plane, max_attempts=1, lease_seconds=60.0)
    now = utcnow()
    common: dict[str, Any] = {"key": f"publish:k9:{t.id}", "actor": "ana", "correlation_id": "c"}

    with pytest.raises(RuntimeError):
        await runner.publish(intent_for(t), DEVICES, now=now, **common)
    given_up = await runner.publish(
        intent_for(t), DEVICES, now=now + timedelta(minutes=5), **common
    )
    assert (given_up.status, given_up.error_class, given_up.attempts) == ("failed", "transient", 1)
    assert given_up.error == "gave up after 1 attempts" and len(plane.calls) == 1
    assert [e["outcome"] for e in await connector_events(t)] == ["failure"]
