"""Agent turns: what a turn is given, what it produces, and how one step's calls run (agent).

Shared by the loop (``agent.loop``) and the slash commands (``agent.commands``), so that a
command's tool call is reported, limited and audited exactly like a route's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agent.intent import unasked
from agent.route import Entry
from sessions.canonical import iso
from sessions.results import Confirmation
from tools.executor import ToolCall, ToolExecutor, ToolOutcome
from tools.registry import ToolContext, ToolSpec

Emit = Callable[[dict[str, Any]], Awaitable[None]]
"""Receives progress events (``tool_call``, ``tool_result``, ``confirmation``) as they happen."""
MAX_CALLS_PER_STEP: Final = 8
"""Tool calls one step may make; the rest are dropped."""


@dataclass(frozen=True, slots=True)
class Turn:
    """What the loop needs for one turn."""

    text: str
    """The person's message, already redacted."""
    history: Sequence[Entry]
    """Earlier messages of the conversation, oldest first, already bounded."""
    ctx: ToolContext
    """Who acts, where, and the collaborators the tools use."""
    tools: Sequence[ToolSpec]
    """The tools this principal may use on this channel."""
    roles: tuple[str, ...] = ()
    """The principal's roles (for ``/whoami``)."""


@dataclass(slots=True)
class TurnResult:
    """What a turn produced."""

    reply: str
    """The text sent back."""
    outcomes: list[ToolOutcome] = field(default_factory=list)
    """Every tool call of the turn, in order."""
    confirmation: Confirmation | None = None
    """The confirmation the turn proposed or decided, if any."""
    route: str = "command"
    """``command`` for slash commands, else the route's name."""
    steps: int = 0
    """Route steps taken."""
    model_seconds: float = 0.0
    """Time spent waiting for the route (the model)."""
    tool_seconds: float = 0.0
    """Time spent in tools."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def run_calls(
    executor: ToolExecutor,
    turn: Turn,
    calls: Sequence[ToolCall],
    result: TurnResult,
    emit: Emit,
    asked: str | None = None,
) -> list[ToolOutcome]:
    """Run one step's calls, at most one proposal per turn, and report each.

    With ``asked`` (the person's own words, for a route's calls), a change they did not ask
    for is refused (``agent.intent``).
    """
    allowed: list[ToolCall] = []
    refused: dict[str, ToolOutcome] = {}
    proposing = result.confirmation is not None
    for call in calls:
        await emit(
            {
                "type": "tool_call",
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments if isinstance(call.arguments, dict) else {},
            }
        )
        spec = executor.registry.get(call.name)
        if spec is not None and spec.mutating and asked is not None:
            why = unasked(spec.action, call.arguments, asked)
            if why is not None:
                refused[call.id] = ToolOutcome(call.id, call.name, {}, "denied", why, rule="intent")
                continue
        if spec is not None and spec.mutating:
            if proposing:
                refused[call.id] = ToolOutcome(
                    call.id,
                    call.name,
                    {},
                    "error",
                    "Only one change can be proposed per message; confirm or deny the "
                    "pending one first.",
                )
                continue
            proposing = True
        allowed.append(call)
    started = time.perf_counter()
    ran = {o.call_id: o for o in await executor.run(turn.ctx, allowed)}
    result.tool_seconds += time.perf_counter() - started
    outcomes = [ran.get(c.id) or refused[c.id] for c in calls]
    for outcome in outcomes:
        result.outcomes.append(outcome)
        await emit(
            {
                "type": "tool_result",
                "call_id": outcome.call_id,
                "name": outcome.name,
                "status": outcome.status,
                "text": outcome.text,
            }
        )
        if outcome.confirmation is not None:
            result.confirmation = outcome.confirmation
            await emit(confirmation_event(outcome.confirmation))
    return outcomes


def confirmation_event(confirmation: Confirmation) -> dict[str, Any]:
    """A confirmation as channels show it: the exact arguments, hash, expiry and state."""
    return {
        "type": "confirmation",
        "id": confirmation.id,
        "tool": confirmation.tool,
        "summary": confirmation.summary,
        "arguments": confirmation.arguments,
        "arguments_hash": confirmation.arguments_hash,
        "expires_at": iso(confirmation.expires_at),
        "state": confirmation.state,
    }


def stopped_reply(max_steps: int, outcomes: Sequence[ToolOutcome]) -> str:
    """The reply when the route never answered within the step limit."""
    done = "; ".join(f"{o.name}: {o.status}" for o in outcomes) or "no tool calls"
    return f"I stopped after {max_steps} steps without a final answer ({done})."
