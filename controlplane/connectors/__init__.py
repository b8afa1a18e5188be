"""Control plane execution planes: the connector interface, its errors and the task runner.

Sits below rollouts (seed 002 §6): a rollout decides which version of an application should
be in which ring; a ``Connector`` makes an execution plane (Intune, Jamf, SCCM, Landscape,
the built-in fleet simulator) do it, and ``TaskRunner`` makes every call to a plane safe to
repeat. The control plane never talks to endpoints, only to planes.

Errors, drawn once::

    ConnectorError              error_class        what the runner does
    ├── TransientError          transient          retries with exponential backoff (honouring
    │                                              ``retry_after``) up to ``max_attempts``,
    │                                              then fails the task
    ├── PermanentError          permanent          fails the task at once (unknown object,
    │                                              invalid payload, unsupported action)
    └── PolicyViolationError    policy_violation   fails the task at once; the plane refused on
                                                   policy grounds, so retrying cannot help

How an intent maps onto plane objects (deterministic: the same intent, ring and key always
name the same objects, which is what makes a repeated call harmless)::

    control plane        simulator               Intune (Graph)              Jamf Pro
    application+version  DeviceInstall rows      mobileApp (win32LobApp,     package
                                                 macOSPkgApp, …)
    ring r of an intent  DeviceInstall.ring      Entra group per app, ring   static group per
                                                 (assignment target)         app, ring + policy
    devices              device ids              group members (Entra        computer ids
                                                 device ids)
    idempotency key      skip existing rows      tag in displayName/notes;   tag in the policy
                                                 look up before creating     name; look up first
    query                count rows by status    deviceStatuses,             policy logs
                                                 installSummary
    remediate rollback   restore the previous    supersedence, uninstall     uninstall policy,
                         inventory version       assignment                  version pin
    correlate            ``sim://`` references   app id, assignment ids      package, policy ids

The runner records each call as a ``ConnectorTask`` keyed by its idempotency key: a call with
a key already done or failed returns the stored outcome without reaching the plane; a pending
one is tried again only once its ``next_attempt_at`` has passed. Callers re-issue the same
call (the simulator's tick does, every tick) rather than the runner keeping a queue, which is
the desired-state loop of seed 002 §5.6. A process that dies mid-call leaves the task claimed
for ``lease_seconds``; the next call after that tries again, so connectors pass the key on to
the plane where they can.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.errors import ConflictError
from controlplane.events import NewEvent, append_events
from controlplane.models import utcnow
from controlplane.models_release import ConnectorTask
from controlplane.state import ServiceState

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

Operation = Literal["publish", "query", "remediate", "correlate"]
"""What a connector is asked to do (seed 002 §6.1)."""
RemediateAction = Literal["rollback", "redeploy"]
"""``rollback``: undo the intent's installs; ``redeploy``: assign failed installs again."""
TaskStatus = Literal["done", "pending", "failed"]

MAX_ATTEMPTS: Final = 5
"""Attempts a task gets before a transient failure becomes final."""
BACKOFF_BASE_SECONDS: Final = 2.0
"""Delay after the first transient failure; each further one doubles it."""
BACKOFF_CAP_SECONDS: Final = 300.0
"""Longest delay between two attempts, unless the plane asks for more (``retry_after``)."""
LEASE_SECONDS: Final = 120.0
"""How long a claimed task is hidden from other callers; outlasts any single plane call."""


class ConnectorError(Exception):
    """Base of every error a connector raises on purpose."""

    error_class: ClassVar[str] = "permanent"
    """Stored in ``ConnectorTask.error_class``."""

    def __init__(
        self, message: str, *, plane_code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.plane_code = plane_code
        """The plane's own error code (an HTTP status, a Graph error code), if it gave one."""
        self.details = details or {}
        """Further structured detail (JSON), never a secret."""


class TransientError(ConnectorError):
    """The plane may accept the same call later: throttling, 5xx, timeouts."""

    error_class = "transient"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        plane_code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, plane_code=plane_code, details=details)
        self.retry_after = retry_after
        """Seconds the plane asked us to wait (``Retry-After``), if it said."""


class PermanentError(ConnectorError):
    """The call can never succeed as made: unknown object, invalid payload, unsupported."""

    error_class = "permanent"


class PolicyViolationError(ConnectorError):
    """The plane (or the connector on its behalf) refused the call on policy grounds."""

    error_class = "policy_violation"


@dataclass(frozen=True, slots=True)
class Intent:
    """What a connector is asked to make true: one version of an application, in one ring."""

    id: str
    """Deployment intent id; plane objects are named after it."""
    tenant_id: str
    """Tenant the intent belongs to."""
    application_id: str
    """Catalog application id."""
    application: str
    """Canonical application name (``firefox``); the package name on the device."""
    version_id: str
    """Catalog version id."""
    version: str
    """The version to install."""
    target_scope_id: str
    """Scope whose subtree the intent targets."""
    ring: int
    """The rollout's current ring (0 lab … 4 global)."""
    constraints: dict[str, Any] = field(default_factory=dict)
    """The intent's constraints (``exclude_scope_ids``, ``max_devices``, …) as JSON."""


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A device as a plane needs to know it."""

    id: str
    """Control plane device id."""
    name: str
    """Host name."""
    platform: str
    """macos, windows, linux, ios or android."""
    site_class: str
    """online, intermittent or air_gapped (seed 002 §8.1)."""
    ring: int
    """The device's rollout ring."""


@dataclass(frozen=True, slots=True)
class Published:
    """What ``publish`` did."""

    plane_ref: str
    """The plane's identifier of the assignment (an Intune assignment id, a Jamf policy id)."""
    assigned: int
    """Devices newly assigned by this call."""
    already_assigned: int
    """Devices that had the assignment already (a repeated call on the plane's side)."""


@dataclass(frozen=True, slots=True)
class InstallStatus:
    """What ``query`` read: install progress of the intent's current ring."""

    plane_ref: str
    """The plane's identifier of the assignment read."""
    ring: int
    """The ring the counts are for."""
    counts: dict[str, int]
    """Devices per install status: pending, succeeded, failed, rolled_back."""


@dataclass(frozen=True, slots=True)
class Remediated:
    """What ``remediate`` did."""

    plane_ref: str
    """The plane's identifier of the remediation (an uninstall assignment, a script run)."""
    action: str
    """The action taken."""
    devices: int
    """Devices whose install changed."""


@dataclass(frozen=True, slots=True)
class Correlation:
    """Control-plane names mapped to the plane artifacts that carry them (seed 002 §6.1)."""

    plane_refs: dict[str, str]
    """``application`` and ``ring.<n>`` → the plane's identifier of that object."""


class Connector(Protocol):
    """An execution plane adapter (seed 002 §6). Implementations keep every call idempotent
    under ``key``: the runner may repeat a call whose outcome it never recorded."""

    name: str
    """Short name stored with each task (``simulator``, ``intune``, ``jamf``)."""

    async def publish(self, intent: Intent, devices: Sequence[DeviceRef], *, key: str) -> Published:
        """Create or update the app/package and assign it to ``devices`` for ``intent.ring``."""
        ...

    async def query(self, intent: Intent, *, key: str) -> InstallStatus:
        """Read install status of the intent's current ring."""
        ...

    async def remediate(
        self,
        intent: Intent,
        devices: Sequence[DeviceRef] | None,
        action: RemediateAction,
        *,
        key: str,
    ) -> Remediated:
        """Roll back or redeploy on ``devices`` (None: every device the intent reached)."""
        ...

    async def correlate(self, intent: Intent, *, key: str) -> Correlation:
        """Map the intent to the plane artifacts that carry it."""
        ...


@dataclass(frozen=True, slots=True)
class TaskOutcome[R]:
    """Where one keyed call stands after ``TaskRunner`` handled it."""

    key: str
    """The idempotency key."""
    status: TaskStatus
    """done, pending (a transient failure waits for its next attempt) or failed."""
    result: R | None
    """The plane's answer when done."""
    attempts: int
    """Calls made to the plane under this key so far."""
    error_class: str | None = None
    """transient, permanent or policy_violation after a failure."""
    error: str | None = None
    """The last error's message."""
    next_attempt_at: datetime | None = None
    """When pending: the earliest time a call with this key reaches the plane again."""
    replayed: bool = False
    """True when answered from the stored task without calling the plane."""


def backoff(attempts: int, base_seconds: float, cap_seconds: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: doubling from base, capped."""
    return min(base_seconds * 2.0 ** min(attempts - 1, 32), cap_seconds)


@dataclass(frozen=True, slots=True)
class _Call:
    """One keyed call as the runner records it."""

    operation: Operation
    key: str
    intent: Intent
    payload: dict[str, Any]
    actor: str
    correlation_id: str


class TaskRunner:
    """Calls a connector through ``ConnectorTask`` rows: idempotent, retried, audited."""

    def __init__(
        self,
        state: ServiceState,
        connector: Connector,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_base_seconds: float = BACKOFF_BASE_SECONDS,
        backoff_cap_seconds: float = BACKOFF_CAP_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.state = state
        self.connector = connector
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self.lease = timedelta(seconds=lease_seconds)

    async def publish(
        self,
        intent: Intent,
        devices: Sequence[DeviceRef],
        *,
        key: str,
        actor: str,
        correlation_id: str,
        now: datetime | None = None,
    ) -> TaskOutcome[Published]:
        """Publish ``intent`` to ``devices`` once under ``key`` (see ``Connector.publish``)."""
        call = _Call("publish", key, intent, {"devices": len(devices)}, actor, correlation_id)
        return await self._run(
            call, lambda: self.connector.publish(intent, devices, key=key), Published, now
        )

    async def query(
        self,
        intent: Intent,
        *,
        key: str,
        actor: str,
        correlation_id: str,
        now: datetime | None = None,
    ) -> TaskOutcome[InstallStatus]:
        """Read install status once under ``key`` (see ``Connector.query``)."""
        call = _Call("query", key, intent, {}, actor, correlation_id)
        return await self._run(
            call, lambda: self.connector.query(intent, key=key), InstallStatus, now
        )

    async def remediate(
        self,
        intent: Intent,
        devices: Sequence[DeviceRef] | None,
        action: RemediateAction,
        *,
        key: str,
        actor: str,
        correlation_id: str,
        now: datetime | None = None,
    ) -> TaskOutcome[Remediated]:
        """Remediate once under ``key`` (see ``Connector.remediate``)."""
        payload = {"action": action, "devices": None if devices is None else len(devices)}
        call = _Call("remediate", key, intent, payload, actor, correlation_id)
        return await self._run(
            call,
            lambda: self.connector.remediate(intent, devices, action, key=key),
            Remediated,
            now,
        )

    async def correlate(
        self,
        intent: Intent,
        *,
        key: str,
        actor: str,
        correlation_id: str,
        now: datetime | None = None,
    ) -> TaskOutcome[Correlation]:
        """Map the intent to plane artifacts once under ``key`` (see ``Connector.correlate``)."""
        call = _Call("correlate", key, intent, {}, actor, correlation_id)
        return await self._run(
            call, lambda: self.connector.correlate(intent, key=key), Correlation, now
        )

    async def _run[R: DataclassInstance](
        self,
        call: _Call,
        invoke: Callable[[], Awaitable[R]],
        parse: Callable[..., R],
        now: datetime | None,
    ) -> TaskOutcome[R]:
        now = now or utcnow()
        claimed = await self._claim(call, now)
        if not isinstance(claimed, int):
            return _outcome(claimed, parse, replayed=True)
        # Outside any transaction: a plane call may take seconds, and the simulator writes
        # through ``state.writing()`` itself (its lock is not re-entrant).
        try:
            result = await invoke()
        except ConnectorError as exc:
            return _outcome(await self._record_failure(call, claimed, exc, now), parse)
        # Anything else is a bug, not a plane answer: it propagates and the lease lapses, so
        # the next call with this key tries again.
        return _outcome(await self._record_done(call, claimed, dataclasses.asdict(result)), parse)

    async def _claim(self, call: _Call, now: datetime) -> ConnectorTask | int:
        """The stored task when it must not run now, else the attempt number just claimed."""
        async with self.state.writing() as session:
            await session.execute(
                _insert_ignore(session).values(
                    tenant_id=call.intent.tenant_id,
                    connector=self.connector.name,
                    operation=call.operation,
                    idempotency_key=call.key,
                    intent_id=call.intent.id,
                    payload=call.payload,
                    status="pending",
                    attempts=0,
                    result={},
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            task = (
                await session.execute(
                    select(ConnectorTask)
                    .where(ConnectorTask.idempotency_key == call.key)
                    # PostgreSQL: a concurrent caller with the same key waits here, then sees
                    # the claim below. SQLite writers are serialized already.
                    .with_for_update()
                )
            ).scalar_one()
            mine = (task.tenant_id, task.connector, task.operation, task.intent_id)
            if mine != (call.intent.tenant_id, self.connector.name, call.operation, call.intent.id):
                raise ConflictError(
                    f"idempotency key {call.key!r} was used for another call",
                    field="key",
                    details={"operation": task.operation, "intent_id": task.intent_id},
                )
            if task.status != "pending" or task.next_attempt_at > now:
                return task
            if task.attempts >= self.max_attempts:
                # Attempts that never recorded an outcome (a crash, a bug) count as well.
                task.status, task.error_class = "failed", task.error_class or "transient"
                task.last_error = f"gave up after {task.attempts} attempts"
                await self._final_event(session, call, task)
                return task
            task.attempts += 1
            task.next_attempt_at = now + self.lease
            return task.attempts

    async def _record_done(
        self, call: _Call, attempts: int, result: dict[str, Any]
    ) -> ConnectorTask:
        async with self.state.writing() as session:
            task = await _locked(session, call.key)
            if task.status != "pending":
                # Another caller finished it after our lease lapsed; its outcome stands.
                return task
            task.status, task.result, task.attempts = "done", result, attempts
            task.error_class = task.last_error = None
            await self._final_event(session, call, task)
        return task

    async def _record_failure(
        self, call: _Call, attempts: int, exc: ConnectorError, now: datetime
    ) -> ConnectorTask:
        async with self.state.writing() as session:
            task = await _locked(session, call.key)
            if task.status != "pending":
                return task
            task.attempts, task.error_class = attempts, exc.error_class
            task.last_error = exc.message[:500]
            retry = isinstance(exc, TransientError) and attempts < self.max_attempts
            if retry:
                delay = backoff(attempts, self.backoff_base_seconds, self.backoff_cap_seconds)
                if isinstance(exc, TransientError) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                task.next_attempt_at = now + timedelta(seconds=delay)
            else:
                task.status = "failed"
                await self._final_event(session, call, task)
            log.warning(
                "connector call failed",
                extra={
                    "connector": self.connector.name,
                    "operation": call.operation,
                    "key": call.key,
                    "attempt": attempts,
                    "error_class": exc.error_class,
                    "plane_code": exc.plane_code,
                    "will_retry": retry,
                },
            )
        return task

    async def _final_event(self, session: AsyncSession, call: _Call, task: ConnectorTask) -> None:
        await session.flush()
        data: dict[str, Any] = {
            "connector": task.connector,
            "operation": task.operation,
            "key": task.idempotency_key,
            "intent_id": task.intent_id,
            "ring": call.intent.ring,
            "attempts": task.attempts,
        }
        if task.status == "done":
            data["result"] = task.result
        else:
            data |= {"error_class": task.error_class, "error": task.last_error}
        event = NewEvent(
            type="connector_task",
            action=f"connector.{task.operation}",
            outcome="success" if task.status == "done" else "failure",
            actor=call.actor,
            correlation_id=call.correlation_id,
            task_id=str(task.id),
            data=data,
        )
        await append_events(session, task.tenant_id, [event])


def _insert_ignore(session: AsyncSession) -> Any:
    """``INSERT … ON CONFLICT (idempotency_key) DO NOTHING`` for this dialect."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(ConnectorTask).on_conflict_do_nothing(index_elements=["idempotency_key"])


async def _locked(session: AsyncSession, key: str) -> ConnectorTask:
    stmt = select(ConnectorTask).where(ConnectorTask.idempotency_key == key).with_for_update()
    return (await session.execute(stmt)).scalar_one()


def _outcome[R](
    task: ConnectorTask, parse: Callable[..., R], *, replayed: bool = False
) -> TaskOutcome[R]:
    status: TaskStatus = (
        "done" if task.status == "done" else ("failed" if task.status == "failed" else "pending")
    )
    return TaskOutcome(
        key=task.idempotency_key,
        status=status,
        result=parse(**task.result) if status == "done" else None,
        attempts=task.attempts,
        error_class=task.error_class,
        error=task.last_error,
        next_attempt_at=task.next_attempt_at if status == "pending" else None,
        replayed=replayed,
    )
