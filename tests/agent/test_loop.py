"""The agent loop with a scripted route that fails on unused steps, and slash commands."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.loop import AgentLoop
from agent.route import (
    CallTools,
    Reply,
    RouteOutputError,
    RouteResult,
    Step,
    StepRequest,
    ToolCall,
    ToolOutput,
)
from agent.turn import Turn
from sessions.store import SessionStore
from tools.controlplane import ControlPlaneClient
from tools.executor import ToolExecutor
from tools.registry import Proposal, Registry, ToolContext, ToolResult, tool

EXECUTED: list[str] = []


@tool("test.read", examples=("look at things",))
async def look(ctx: ToolContext) -> ToolResult:
    """Looks."""
    return ToolResult({"seen": 1}, "saw one thing")


@tool("test.change", mutating=True, examples=("change a thing",))
async def change(ctx: ToolContext, target: str) -> Proposal:
    """Proposes a change.

    Args:
        target: What to change.
    """
    return Proposal({"target": target}, f"Change {target}")


@change.executor
async def _change(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    EXECUTED.append(arguments["target"])
    return ToolResult({}, f"changed {arguments['target']}")


@dataclass
class ScriptedRoute:
    """Answers each step from its script; a step beyond it fails the test."""

    steps: list[Step | Exception]
    name: str = "scripted"
    seen: list[StepRequest] = field(default_factory=list)

    async def next_step(self, request: StepRequest) -> RouteResult:
        self.seen.append(request)
        assert self.steps, f"unscripted step {request.step}"
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return RouteResult(step)

    async def close(self) -> None:
        assert not self.steps, f"unused steps: {self.steps}"


@dataclass(frozen=True)
class Allow:
    allowed: bool = True
    reason: str = "granted"
    rule: str = "roles.test.grants[0]"


class AllowAll:
    def authorize(self, action: str, scope_path: Sequence[str] | None) -> Allow:
        return Allow()

    def redact(self, text: str) -> str:
        return text


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    opened = await SessionStore.open(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    yield opened
    await opened.close()


@pytest.fixture
async def turn_for(store: SessionStore) -> AsyncIterator[Any]:
    conversation = (await store.admit("cli", "e1", "cli:ana", "ana", "hi")).conversation_id
    async with ControlPlaneClient("http://127.0.0.1:9", "unused") as cp:
        ctx = ToolContext("ana", "ana", "cli", conversation, "req-1", cp, AllowAll())

        def make(text: str) -> Turn:
            return Turn(text, [], ctx, [look, change], ("tester",))

        yield make


def loop(store: SessionStore, route: ScriptedRoute, max_steps: int = 6) -> AgentLoop:
    return AgentLoop(route, ToolExecutor(Registry([look, change]), store), max_steps=max_steps)


async def ignore(_: dict[str, Any]) -> None:
    return None


async def test_tool_outputs_go_back_to_the_route_as_data(
    store: SessionStore, turn_for: Any
) -> None:
    route = ScriptedRoute([CallTools((ToolCall("c1", "look", {}),)), Reply("one thing")])
    events: list[dict[str, Any]] = []

    async def record(event: dict[str, Any]) -> None:
        events.append(event)

    result = await loop(store, route).run(turn_for("what is there?"), record)
    await route.close()
    assert result.reply == "one thing" and result.steps == 2
    last = route.seen[1].transcript[-1]
    assert isinstance(last, ToolOutput) and last.content == "saw one thing"
    assert [e["type"] for e in events] == ["tool_call", "tool_result"]


async def test_the_step_limit_stops_a_looping_route(store: SessionStore, turn_for: Any) -> None:
    route = ScriptedRoute([CallTools((ToolCall(f"c{n}", "look", {}),)) for n in range(3)])
    result = await loop(store, route, max_steps=3).run(turn_for("loop forever"), ignore)
    await route.close()
    assert "stopped after 3 steps" in result.reply
    assert len(result.outcomes) == 3


async def test_one_proposal_per_turn(store: SessionStore, turn_for: Any) -> None:
    EXECUTED.clear()
    route = ScriptedRoute(
        [
            CallTools(
                (
                    ToolCall("c1", "change", {"target": "a"}),
                    ToolCall("c2", "change", {"target": "b"}),
                )
            ),
            CallTools((ToolCall("c3", "change", {"target": "c"}),)),
            Reply("asked"),
        ]
    )
    result = await loop(store, route).run(turn_for("change a, b and c"), ignore)
    await route.close()
    assert [o.status for o in result.outcomes] == ["confirmation_required", "error", "error"]
    assert "Only one change" in result.outcomes[1].text
    assert len(await store.pending_for("ana")) == 1
    assert EXECUTED == []


async def test_a_route_failure_is_a_clear_reply(store: SessionStore, turn_for: Any) -> None:
    route = ScriptedRoute([RouteOutputError("the model's answer was not JSON")])
    result = await loop(store, route).run(turn_for("hello"), ignore)
    assert (
        "the model's answer was not JSON" in result.reply and "Nothing was changed" in result.reply
    )


async def test_slash_commands_never_reach_the_route(store: SessionStore, turn_for: Any) -> None:
    EXECUTED.clear()
    route = ScriptedRoute([CallTools((ToolCall("c1", "change", {"target": "x"}),)), Reply("ok")])
    run = loop(store, route)
    await run.run(turn_for("change x"), ignore)
    (waiting,) = await store.pending_for("ana")
    help_text = (await run.run(turn_for("/help"), ignore)).reply
    assert "change a thing (asks for confirmation)" in help_text and "/approve" in help_text
    pending = (await run.run(turn_for("/pending"), ignore)).reply
    assert waiting.id in pending and "Change x" in pending
    confirmed = await run.run(turn_for(f"/approve {waiting.id}"), ignore)
    assert confirmed.reply.startswith("Confirmed and done") and EXECUTED == ["x"]
    again = await run.run(turn_for(f"/approve {waiting.id}"), ignore)
    assert "Nothing happened" in again.reply and EXECUTED == ["x"]
    assert "/frob" in (await run.run(turn_for("/frob"), ignore)).reply
    assert "Usage" in (await run.run(turn_for("/approve"), ignore)).reply
    await route.close()  # the route answered only the first, plain-text turn


async def test_cancel_denies_what_waits_in_this_conversation(
    store: SessionStore, turn_for: Any
) -> None:
    route = ScriptedRoute([CallTools((ToolCall("c1", "change", {"target": "y"}),)), Reply("ok")])
    run = loop(store, route)
    await run.run(turn_for("change y"), ignore)
    cancelled = await run.run(turn_for("/cancel"), ignore)
    assert "Cancelled: Change y" in cancelled.reply
    assert await store.pending_for("ana") == []
    assert "Nothing to cancel" in (await run.run(turn_for("/cancel"), ignore)).reply
    await route.close()
