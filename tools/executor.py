"""Tool executor: the one place tools run, for every route (agent → tools → control plane).

For each call it parses and validates the arguments, asks the ``Guard`` (the policy layer,
lent by the gateway) before running and again with the target's scope once it is known,
bounds the call with a timeout, and audits it. A read-only tool's result is returned; a
mutating tool's proposal becomes a persisted ``Confirmation`` and nothing changes until the
bound principal confirms it. ``decide`` takes that confirmation (one conditional UPDATE in
the store), and ``execute`` runs it once, with the confirmation's idempotency key, which the
control plane honours, so a crash between confirm and execute never runs the action twice.

Outcomes, never exceptions, leave this module: an unknown tool, malformed or invalid
arguments, a denial, a timeout and a failing control plane all become a ``ToolOutcome`` whose
``text`` is safe to show and to hand back to a model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

import orjson
from opentelemetry import trace

from sessions.results import Confirmation, Decided
from sessions.store import SessionStore
from tools.errors import ConflictError, ControlPlaneError, ControlPlaneUnavailableError
from tools.registry import (
    ArgumentsError,
    Json,
    Proposal,
    Registry,
    ToolContext,
    ToolInputError,
    ToolResult,
    ToolSpec,
)

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("goodbot.tools")
"""Spans through the OpenTelemetry API: no-ops unless the process configures an SDK."""

Status = Literal["ok", "error", "denied", "confirmation_required"]
SCOPE_KEY: Final = "target_scope_path"
"""Key under which a confirmation's arguments carry the target's scope path, so the policy
can be checked again, with the same target, when it is executed."""
MAX_ARGUMENT_BYTES: Final = 16_384
"""Largest arguments document a route may send for one call."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call a route asks for."""

    id: str
    """Unique within the turn (the model's call id, or the rules route's own)."""
    name: str
    """Tool name; an unknown one comes back as an error outcome."""
    arguments: dict[str, Any] | str
    """Arguments as an object, or the raw JSON text a model sent (parsed here)."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """How one tool call ended."""

    call_id: str
    """The call it answers."""
    name: str
    """The tool's name as called."""
    arguments: dict[str, Any]
    """The arguments as validated (empty when they could not be parsed)."""
    status: Status
    """``ok``; ``error`` (unknown tool, bad arguments, the control plane refused or failed);
    ``denied`` by policy; ``confirmation_required`` (a proposal now waits for the person)."""
    text: str
    """For the person and the model: the tool's rendering, or why it did not run."""
    data: Any = None
    """The structured result when ``ok``."""
    confirmation: Confirmation | None = None
    """The pending confirmation a mutating tool created."""
    rule: str | None = None
    """The deciding policy rule, when the policy decided."""
    seconds: float = 0.0
    """Time the tool took (control-plane calls included)."""


class ToolExecutor:
    """Runs tool calls for one gateway process; share one instance."""

    def __init__(
        self,
        registry: Registry,
        store: SessionStore,
        *,
        timeout: float = 10.0,
        confirmation_ttl: timedelta = timedelta(minutes=10),
    ) -> None:
        """Args:
        registry: The tools.
        store: Where confirmations and audit records go.
        timeout: Seconds one tool call may take.
        confirmation_ttl: How long a proposal waits for its decision.
        """
        self.registry = registry
        self.store = store
        self.timeout = timeout
        self.confirmation_ttl = confirmation_ttl

    async def run(self, ctx: ToolContext, calls: Sequence[ToolCall]) -> list[ToolOutcome]:
        """Run one step's calls: read-only ones concurrently, proposals one after another.

        Outcomes come back in the order of ``calls``.
        """
        outcomes: dict[int, ToolOutcome] = {}
        reads: list[tuple[int, ToolCall]] = []
        for n, call in enumerate(calls):
            spec = self.registry.get(call.name)
            if spec is not None and not spec.mutating:
                reads.append((n, call))
        done = await asyncio.gather(*(self.call(ctx, call) for _, call in reads))
        outcomes.update((n, outcome) for (n, _), outcome in zip(reads, done, strict=True))
        for n, call in enumerate(calls):
            if n not in outcomes:
                outcomes[n] = await self.call(ctx, call)
        return [outcomes[n] for n in range(len(calls))]

    async def call(self, ctx: ToolContext, call: ToolCall) -> ToolOutcome:
        """Run one call to an outcome, auditing it (``tool.called``)."""
        started = time.perf_counter()
        with _TRACER.start_as_current_span(
            "goodbot.tool",
            attributes={"goodbot.tool": call.name, "goodbot.principal": ctx.principal},
        ) as span:
            outcome = await self._call(ctx, call)
            span.set_attribute("goodbot.tool.status", outcome.status)
        outcome = dataclasses.replace(outcome, seconds=time.perf_counter() - started)
        await self._audit_call(ctx, outcome)
        return outcome

    async def _call(self, ctx: ToolContext, call: ToolCall) -> ToolOutcome:
        spec = self.registry.get(call.name)
        if spec is None:
            known = ", ".join(s.name for s in self.registry.all())
            return _failed(call, {}, f"there is no tool named {call.name!r}; tools: {known}")
        try:
            raw = _parse_arguments(call.arguments)
            arguments = spec.validate(raw)
        except ArgumentsError as exc:
            return _failed(
                call, {}, f"invalid arguments for {spec.name}: " + "; ".join(exc.problems)
            )
        except ValueError as exc:
            return _failed(call, {}, f"invalid arguments for {spec.name}: {exc}")
        verdict = ctx.guard.authorize(spec.action, None)
        if not verdict.allowed:
            return _denied(call, arguments, verdict.reason, verdict.rule)
        produced = await self._bounded(ctx, call, spec, arguments, spec.function(ctx, **arguments))
        if isinstance(produced, ToolOutcome):
            return produced
        if spec.mutating:
            if not isinstance(produced, Proposal):
                raise TypeError(f"mutating tool {spec.name} must return a Proposal")
            return await self._propose(ctx, spec, call, arguments, produced)
        if not isinstance(produced, ToolResult):
            raise TypeError(f"tool {spec.name} must return a ToolResult")
        if produced.scope_path:
            verdict = ctx.guard.authorize(spec.action, produced.scope_path)
            if not verdict.allowed:
                return _denied(call, arguments, verdict.reason, verdict.rule)
        return ToolOutcome(
            call.id, call.name, arguments, "ok", produced.text, produced.data, rule=verdict.rule
        )

    async def _propose(
        self, ctx: ToolContext, spec: ToolSpec, call: ToolCall, arguments: Json, proposal: Proposal
    ) -> ToolOutcome:
        verdict = ctx.guard.authorize(spec.action, proposal.scope_path)
        if not verdict.allowed:
            return _denied(call, arguments, verdict.reason, verdict.rule)
        stored = dict(proposal.arguments)
        stored[SCOPE_KEY] = list(proposal.scope_path)
        confirmation = await self.store.create_confirmation(
            ctx.principal,
            ctx.conversation_id,
            ctx.channel,
            spec.name,
            stored,
            proposal.summary,
            self.confirmation_ttl,
        )
        text = (
            f"This needs your confirmation: **{proposal.summary}**. "
            f"Confirmation `{confirmation.id}` expires in "
            f"{int(self.confirmation_ttl.total_seconds() // 60)} minutes; nothing has changed yet."
        )
        return ToolOutcome(
            call.id,
            call.name,
            arguments,
            "confirmation_required",
            text,
            {"confirmation_id": confirmation.id, "summary": proposal.summary},
            confirmation=confirmation,
            rule=verdict.rule,
        )

    async def decide(
        self,
        principal: str,
        confirmation_id: str,
        decision: Literal["confirm", "deny"],
        arguments_hash: str | None = None,
    ) -> Decided:
        """Record the principal's decision (one conditional UPDATE; see ``SessionStore.decide``)."""
        return await self.store.decide(confirmation_id, principal, decision, arguments_hash)

    async def execute(self, ctx: ToolContext, confirmation: Confirmation) -> ToolOutcome:
        """Run a confirmed proposal exactly once; any other caller gets an ``error`` outcome.

        ``ctx`` must be the bound principal's. The policy is checked again with the stored
        target; the control-plane call carries the confirmation's idempotency key.
        """
        started = time.perf_counter()
        call = ToolCall(confirmation.id, confirmation.tool, {})
        if confirmation.state == "confirmed":
            if not await self.store.begin_execution(confirmation.id):
                return _failed(call, {}, "this confirmation is being executed or was already")
        elif confirmation.state != "executing":
            return _failed(call, {}, f"this confirmation is {confirmation.state}, not confirmed")
        outcome = await self._execute(ctx, confirmation, call)
        outcome = dataclasses.replace(outcome, seconds=time.perf_counter() - started)
        if outcome.status == "ok":
            await self.store.finish_execution(confirmation.id, result=outcome.data)
        else:
            await self.store.finish_execution(confirmation.id, error=outcome.text)
        return outcome

    async def _execute(
        self, ctx: ToolContext, confirmation: Confirmation, call: ToolCall
    ) -> ToolOutcome:
        arguments = {k: v for k, v in confirmation.arguments.items() if k != SCOPE_KEY}
        spec = self.registry.get(confirmation.tool)
        if spec is None or spec.execute_function is None:
            return _failed(call, arguments, f"the tool {confirmation.tool!r} no longer exists")
        scope_path = tuple(confirmation.arguments.get(SCOPE_KEY) or ())
        verdict = ctx.guard.authorize(spec.action, scope_path)
        if not verdict.allowed:
            return _denied(call, arguments, verdict.reason, verdict.rule)
        keyed = dataclasses.replace(ctx, idempotency_key=confirmation.idempotency_key)
        result = await self._bounded(
            ctx, call, spec, arguments, spec.execute_function(keyed, arguments)
        )
        if isinstance(result, ToolOutcome):
            return result
        if not isinstance(result, ToolResult):
            raise TypeError(f"the executor of {spec.name} must return a ToolResult")
        return ToolOutcome(call.id, spec.name, arguments, "ok", result.text, result.data)

    async def _bounded(
        self,
        ctx: ToolContext,
        call: ToolCall,
        spec: ToolSpec,
        arguments: Json,
        running: Awaitable[Any],
    ) -> Any:
        """Await a tool function within the timeout; a failure becomes an ``error`` outcome."""
        try:
            async with asyncio.timeout(self.timeout):
                return await running
        except TimeoutError:
            return _failed(call, arguments, f"{spec.name} did not finish within {self.timeout:g} s")
        except ToolInputError as exc:
            return _failed(call, arguments, str(exc))
        except ControlPlaneError as exc:
            return _failed(call, arguments, describe_error(exc))
        except Exception:
            log.exception("tool failed", extra={"tool": spec.name, "request_id": ctx.request_id})
            return _failed(
                call, arguments, f"{spec.name} failed unexpectedly (request id {ctx.request_id})"
            )

    async def _audit_call(self, ctx: ToolContext, outcome: ToolOutcome) -> None:
        redacted = ctx.guard.redact(orjson.dumps(outcome.arguments).decode())
        kind = "tool.called" if outcome.status != "denied" else "tool.denied"
        data = {
            "tool": outcome.name,
            "call_id": outcome.call_id,
            "arguments": redacted,
            "status": outcome.status,
            "rule": outcome.rule,
            "request_id": ctx.request_id,
            "seconds": round(outcome.seconds, 4),
            "confirmation_id": outcome.confirmation.id if outcome.confirmation else None,
            "error": ctx.guard.redact(outcome.text[:500]) if outcome.status == "error" else None,
        }
        if ctx.audit_log is not None:
            ctx.audit_log.append((kind, data))
            return
        await self.store.audit(kind, ctx.principal, ctx.channel, ctx.conversation_id, data)


def _parse_arguments(raw: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if len(raw.encode()) > MAX_ARGUMENT_BYTES:
        raise ValueError(f"the arguments are over {MAX_ARGUMENT_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("the arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ValueError("the arguments must be a JSON object")
    return parsed


def _failed(call: ToolCall, arguments: Json, text: str) -> ToolOutcome:
    return ToolOutcome(call.id, call.name, arguments, "error", text)


def _denied(call: ToolCall, arguments: Json, reason: str, rule: str) -> ToolOutcome:
    return ToolOutcome(
        call.id, call.name, arguments, "denied", f"Not allowed: {reason} ({rule}).", rule=rule
    )


def describe_error(exc: ControlPlaneError) -> str:
    """A control-plane failure as a sentence: the reason, failed gates, the request id."""
    if isinstance(exc, ControlPlaneUnavailableError):
        text = f"The control plane is not available: {exc.message}"
    else:
        text = f"The control plane refused: {exc.message}"
    if isinstance(exc, ConflictError):
        gates = exc.details.get("gates")
        if isinstance(gates, list):
            failed = [
                f"{g.get('name')}: {g.get('reason')}"
                for g in gates
                if isinstance(g, dict) and g.get("verdict") not in ("passed", None)
            ]
            if failed:
                text += " Gates not passed: " + "; ".join(str(f)[:300] for f in failed) + "."
    if exc.request_id:
        text += f" (request id {exc.request_id})"
    return text
