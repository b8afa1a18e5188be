"""Helpers for the built-in tool tests: a real ``ToolContext`` on a demo control plane."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.demo import DemoControlPlane
from tools.builtin import default_registry
from tools.controlplane import ControlPlaneClient
from tools.registry import Proposal, ToolContext, ToolResult

REGISTRY = default_registry()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the test guard answers: always allowed."""

    allowed: bool
    reason: str
    rule: str


@dataclass
class RecordingGuard:
    """Allows everything and records what it was asked (tools leave policy to the executor)."""

    calls: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)

    def authorize(self, action: str, scope_path: Sequence[str] | None) -> Verdict:
        self.calls.append((action, None if scope_path is None else tuple(scope_path)))
        return Verdict(True, "the tests allow everything", "test:allow")

    def redact(self, text: str) -> str:
        return text


@asynccontextmanager
async def context(
    cp: DemoControlPlane, act_as: str, *, idempotency_key: str | None = None
) -> AsyncIterator[ToolContext]:
    """A tool context acting as ``act_as`` through the gateway's credential."""
    async with ControlPlaneClient(cp.url, cp.gateway_token, timeout=30) as client:
        yield ToolContext(
            principal=act_as,
            act_as=act_as,
            channel="cli",
            conversation_id="conv-test",
            request_id=f"test-{uuid.uuid4().hex[:12]}",
            cp=client,
            guard=RecordingGuard(),
            idempotency_key=idempotency_key,
        )


async def read(ctx: ToolContext, name: str, **arguments: Any) -> ToolResult:
    """Run a read-only tool as the executor would: validate, then call."""
    spec = REGISTRY.get(name)
    assert spec is not None and not spec.mutating
    result = await spec.function(ctx, **spec.validate(arguments))
    assert isinstance(result, ToolResult)
    return result


async def propose(ctx: ToolContext, name: str, **arguments: Any) -> Proposal:
    """Run a mutating tool's proposing function."""
    spec = REGISTRY.get(name)
    assert spec is not None and spec.mutating
    proposal = await spec.function(ctx, **spec.validate(arguments))
    assert isinstance(proposal, Proposal)
    return proposal


async def execute(ctx: ToolContext, name: str, proposal: Proposal) -> ToolResult:
    """Make a confirmed proposal's change."""
    spec = REGISTRY.get(name)
    assert spec is not None and spec.execute_function is not None
    return await spec.execute_function(ctx, proposal.arguments)


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The Markdown table rows of ``text`` whose first cell is ``first_cell``, split on
    unescaped pipes."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in _split(line.strip()[1:-1])]
        if cells and cells[0] == first_cell:
            rows.append(cells)
    return rows


def _split(line: str) -> list[str]:
    cells, current, escaped = [], "", False
    for char in line:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            cells.append(current)
            current = ""
        else:
            current += char
    return [*cells, current]


async def cp_post(cp: DemoControlPlane, act_as: str, path: str, body: dict[str, Any]) -> Any:
    """A raw control-plane POST as ``act_as``, for setting up data the tools do not create."""
    headers = {"Authorization": f"Bearer {cp.gateway_token}", "X-Act-As": act_as}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{cp.url}/api/v1{path}", json=body, headers=headers) as resp,
    ):
        assert resp.status == 201, await resp.text()
        return await resp.json()
