"""The tool executor with small tools of the test's own and a real store on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sessions.store import SessionStore
from tools.controlplane import ControlPlaneClient
from tools.executor import ToolCall, ToolExecutor
from tools.registry import Proposal, Registry, ToolContext, ToolResult, tool

SIGNALS: dict[str, asyncio.Event] = {}
"""Events the concurrency tools share; made inside each test's own event loop."""


@tool("test.read")
async def waits_for_b(ctx: ToolContext) -> ToolResult:
    """Finishes only once ``starts_b`` has started: it cannot finish if run alone first."""
    await SIGNALS["b_started"].wait()
    return ToolResult({"a": True}, "a done")


@tool("test.read")
async def starts_b(ctx: ToolContext) -> ToolResult:
    """Signals that it started."""
    SIGNALS["b_started"].set()
    return ToolResult({"b": True}, "b done")


@tool("test.read")
async def sleepy(ctx: ToolContext, seconds: float) -> ToolResult:
    """Sleeps.

    Args:
        seconds: How long.
    """
    await asyncio.sleep(seconds)
    return ToolResult({}, "woke")


@tool("test.read")
async def secret_scope(ctx: ToolContext) -> ToolResult:
    """Reads something inside scope ``scp_secret``."""
    return ToolResult({"payroll": 1}, "payroll data", scope_path=("scp_root", "scp_secret"))


@tool("test.change", mutating=True)
async def change(ctx: ToolContext, target: str) -> Proposal:
    """Proposes a change.

    Args:
        target: What to change.
    """
    return Proposal({"target": target}, f"Change {target}", scope_path=("scp_root", target))


@change.executor
async def _change(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    CHANGES.append((arguments["target"], ctx.idempotency_key))
    return ToolResult({"changed": arguments["target"]}, "changed")


CHANGES: list[tuple[str, str | None]] = []


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    rule: str


@dataclass
class ScopedGuard:
    """Allows every action, except for targets inside the ``denied`` scopes."""

    denied: set[str] = field(default_factory=set)
    asked: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)

    def authorize(self, action: str, scope_path: Sequence[str] | None) -> Verdict:
        path = None if scope_path is None else tuple(scope_path)
        self.asked.append((action, path))
        if path is not None and self.denied & set(path):
            return Verdict(False, "not inside your scopes", "roles.test.grants[0]")
        return Verdict(True, "granted", "roles.test.grants[0]")

    def redact(self, text: str) -> str:
        return text.replace("hunter2", "[REDACTED]")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    opened = await SessionStore.open(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    yield opened
    await opened.close()


@pytest.fixture
def guard() -> ScopedGuard:
    return ScopedGuard()


@pytest.fixture
async def ctx(store: SessionStore, guard: ScopedGuard) -> AsyncIterator[ToolContext]:
    conversation = (await store.admit("cli", "e1", "cli:ana", "ana", "hi")).conversation_id
    async with ControlPlaneClient("http://127.0.0.1:9", "unused") as cp:
        yield ToolContext("ana", "ana", "cli", conversation, "req-1", cp, guard)


def executor(store: SessionStore, timeout: float = 2.0) -> ToolExecutor:
    return ToolExecutor(
        Registry([waits_for_b, starts_b, sleepy, secret_scope, change]), store, timeout=timeout
    )


async def test_read_only_calls_of_one_step_run_concurrently(
    store: SessionStore, ctx: ToolContext
) -> None:
    SIGNALS["b_started"] = asyncio.Event()
    outcomes = await executor(store).run(
        ctx, [ToolCall("1", "waits_for_b", {}), ToolCall("2", "starts_b", {})]
    )
    assert [o.status for o in outcomes] == ["ok", "ok"]  # run one by one, the first times out
    assert [o.call_id for o in outcomes] == ["1", "2"]


async def test_a_tool_is_bounded_by_the_timeout(store: SessionStore, ctx: ToolContext) -> None:
    (outcome,) = await executor(store, timeout=0.2).run(
        ctx, [ToolCall("1", "sleepy", '{"seconds": 30}')]
    )
    assert outcome.status == "error"
    assert "did not finish within 0.2 s" in outcome.text


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (ToolCall("1", "nope", {}), "no tool named 'nope'"),
        (ToolCall("1", "sleepy", "{not json"), "not valid JSON"),
        (ToolCall("1", "sleepy", "[1]"), "must be a JSON object"),
        (ToolCall("1", "sleepy", {"seconds": "soon"}), "seconds:"),
        (ToolCall("1", "sleepy", {"seconds": 0, "extra": 1}), "extra: unknown argument"),
        (ToolCall("1", "sleepy", "x" * 20_000), "over 16384 bytes"),
    ],
)
async def test_bad_calls_come_back_as_errors(
    store: SessionStore, ctx: ToolContext, call: ToolCall, says: str
) -> None:
    (outcome,) = await executor(store).run(ctx, [call])
    assert outcome.status == "error" and says in outcome.text


async def test_a_result_outside_the_principals_scopes_is_withheld(
    store: SessionStore, ctx: ToolContext, guard: ScopedGuard
) -> None:
    guard.denied.add("scp_secret")
    (outcome,) = await executor(store).run(ctx, [ToolCall("1", "secret_scope", {})])
    assert outcome.status == "denied"
    assert outcome.data is None and "payroll" not in outcome.text
    assert guard.asked == [("test.read", None), ("test.read", ("scp_root", "scp_secret"))]
    audit = [line async for line in store.export_audit() if "tool.denied" in line]
    assert len(audit) == 1


async def test_a_proposal_waits_and_runs_once_with_its_key(
    store: SessionStore, ctx: ToolContext, guard: ScopedGuard
) -> None:
    CHANGES.clear()
    run = executor(store)
    (proposed,) = await run.run(ctx, [ToolCall("1", "change", {"target": "hunter2"})])
    assert proposed.status == "confirmation_required" and CHANGES == []
    confirmation = proposed.confirmation
    assert confirmation is not None
    assert confirmation.arguments == {
        "target": "hunter2",
        "target_scope_path": ["scp_root", "hunter2"],
    }
    decided = await run.decide("ana", confirmation.id, "confirm")
    assert decided.confirmation is not None
    first, second = await asyncio.gather(
        run.execute(ctx, decided.confirmation), run.execute(ctx, decided.confirmation)
    )
    assert sorted([first.status, second.status]) == ["error", "ok"]
    assert [("hunter2", confirmation.idempotency_key)] == CHANGES
    called = [line async for line in store.export_audit() if '"tool.called"' in line]
    assert called and all("hunter2" not in line for line in called)  # arguments redacted


async def test_the_policy_is_checked_again_at_execution(
    store: SessionStore, ctx: ToolContext, guard: ScopedGuard
) -> None:
    CHANGES.clear()
    run = executor(store)
    (proposed,) = await run.run(ctx, [ToolCall("1", "change", {"target": "scp_payroll"})])
    assert proposed.confirmation is not None
    decided = await run.decide("ana", proposed.confirmation.id, "confirm")
    guard.denied.add("scp_payroll")  # the policy changed between proposal and confirmation
    assert decided.confirmation is not None
    outcome = await run.execute(ctx, decided.confirmation)
    assert outcome.status == "denied" and CHANGES == []
    stored = await store.confirmation(proposed.confirmation.id)
    assert stored is not None and stored.state == "failed"


async def test_a_denied_proposal_creates_no_confirmation(
    store: SessionStore, ctx: ToolContext, guard: ScopedGuard
) -> None:
    guard.denied.add("scp_payroll")
    (outcome,) = await executor(store).run(
        ctx, [ToolCall("1", "change", {"target": "scp_payroll"})]
    )
    assert outcome.status == "denied" and outcome.confirmation is None
    assert await store.pending_for("ana") == []
