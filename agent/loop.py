"""Agent loop: one turn from a person's message to a reply (policy → agent → tools).

Slash commands bypass every route (``agent.commands``). Otherwise the route is asked for a
step; tool calls run through the executor (which checks the policy on every call); their
outcomes go back to the route as data; until the route replies or ``max_steps`` is reached.
A turn proposes at most one change: a second mutating call in the same turn is refused, so
one message can never queue several confirmations.
"""

from __future__ import annotations

import logging
import time

from agent import commands
from agent.route import (
    AssistantCalls,
    CallTools,
    Entry,
    Reply,
    Route,
    RouteError,
    StepRequest,
    ToolOutput,
    UserText,
)
from agent.turn import MAX_CALLS_PER_STEP, Emit, Turn, TurnResult, run_calls, stopped_reply
from tools.executor import ToolExecutor

log = logging.getLogger(__name__)


class AgentLoop:
    """Runs turns with one route and one executor; share one instance per process."""

    def __init__(
        self, route: Route, executor: ToolExecutor, *, max_steps: int = 6, history: int = 20
    ) -> None:
        """Args:
        route: Chooses steps (rules or a model).
        executor: Runs tool calls.
        max_steps: Route steps a turn may take before it stops.
        history: Earlier messages a turn may show the route.
        """
        self.route = route
        self.executor = executor
        self.max_steps = max_steps
        self.history = history

    async def run(self, turn: Turn, emit: Emit) -> TurnResult:
        """Run one turn, reporting progress through ``emit`` (tool calls, confirmations)."""
        if turn.text.lstrip().startswith("/"):
            result = await commands.run(self.executor, turn, emit)
            if result is not None:
                return result
        result = TurnResult(reply="", route=self.route.name)
        transcript: list[Entry] = [*turn.history[-self.history :], UserText(turn.text)]
        # The person's own words (the gateway keeps only theirs in the history).
        asked = "\n".join(e.text for e in transcript if isinstance(e, UserText))
        for step in range(self.max_steps):
            request = StepRequest(transcript, turn.tools, turn.ctx.principal, step)
            started = time.perf_counter()
            try:
                produced = await self.route.next_step(request)
            except RouteError as exc:
                result.model_seconds += time.perf_counter() - started
                result.reply = f"I couldn't get an answer: {exc.message} Nothing was changed."
                log.warning("route failed", extra={"route": self.route.name, "why": exc.message})
                return result
            result.model_seconds += produced.usage.seconds or (time.perf_counter() - started)
            result.prompt_tokens += produced.usage.prompt_tokens
            result.completion_tokens += produced.usage.completion_tokens
            result.steps = step + 1
            if isinstance(produced.step, Reply):
                result.reply = produced.step.text
                return result
            assert isinstance(produced.step, CallTools)
            calls = produced.step.calls[:MAX_CALLS_PER_STEP]
            transcript.append(AssistantCalls(tuple(calls), produced.step.text))
            outcomes = await run_calls(self.executor, turn, calls, result, emit, asked)
            transcript.extend(
                ToolOutput(o.call_id, o.name, o.status, o.text, o.data) for o in outcomes
            )
        result.reply = stopped_reply(self.max_steps, result.outcomes)
        return result
