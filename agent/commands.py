"""Slash commands: answered without any route or model (agent → tools).

``/help``, ``/whoami``, ``/pending``, ``/approve ID``, ``/deny ID``, ``/drift SCOPE``,
``/rollout APP [VERSION]``, ``/cancel``. ``/approve`` and ``/deny`` take a goodbot
confirmation id (``cf_…``: decide it, and run it once if confirmed) or a CAB approval id
(``apr_…``: propose the decision, which then waits for its own confirmation).
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from agent.turn import Emit, Turn, TurnResult, confirmation_event, run_calls
from sessions.results import Decided
from tools.executor import ToolCall, ToolExecutor, ToolOutcome
from tools.registry import ToolContext

COMMANDS: Final = (
    ("/help", "what I can do"),
    ("/whoami", "who I think you are, your roles and tools"),
    ("/pending", "your confirmations waiting for a decision, and approvals waiting for you"),
    ("/approve ID", "confirm a confirmation (cf_…) or propose approving a CAB request (apr_…)"),
    ("/deny ID [reason]", "deny a confirmation (cf_…) or propose denying a CAB request"),
    ("/drift SCOPE", "drift summary of a scope (a team, department or scope id)"),
    ("/rollout APP [VERSION]", "status of an application's rollout"),
    ("/cancel", "deny every confirmation still waiting in this conversation"),
)

Handler = Callable[[ToolExecutor, Turn, Emit, list[str]], Awaitable[TurnResult]]


async def run(executor: ToolExecutor, turn: Turn, emit: Emit) -> TurnResult | None:
    """Answer a slash command; None when the text is not one (so the route gets it)."""
    try:
        words = shlex.split(turn.text.strip())
    except ValueError:
        words = turn.text.strip().split()
    if not words:
        return None
    name, args = words[0].lower(), words[1:]
    handler = _HANDLERS.get(name)
    if handler is None:
        return TurnResult(f"I don't know the command `{words[0]}`. Try /help.")
    return await handler(executor, turn, emit, args)


async def decide_confirmation(
    executor: ToolExecutor,
    ctx: ToolContext,
    confirmation_id: str,
    decision: Literal["confirm", "deny"],
    arguments_hash: str | None = None,
) -> tuple[Decided, ToolOutcome | None]:
    """Decide a confirmation as ``ctx.principal``; when confirmed, execute it once.

    Returns:
        The decision's outcome, and the execution's outcome when it ran.
    """
    decided = await executor.decide(ctx.principal, confirmation_id, decision, arguments_hash)
    if decided.outcome != "confirmed" or decided.confirmation is None:
        return decided, None
    return decided, await executor.execute(ctx, decided.confirmation)


def describe_decision(decided: Decided, executed: ToolOutcome | None) -> str:
    """The reply for a decision: what happened, or precisely why nothing did."""
    if decided.outcome == "denied":
        return "Denied. Nothing was changed."
    if decided.outcome != "confirmed":
        return f"Nothing happened: {decided.reason}."
    if executed is None:
        return "Confirmed."
    if executed.status == "ok":
        return f"Confirmed and done.\n\n{executed.text}"
    return f"Confirmed, but it did not go through: {executed.text}"


async def _help(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    lines = ["**Commands**", ""]
    lines += [f"- `{cmd}`: {what}" for cmd, what in COMMANDS]
    if turn.tools:
        lines += ["", "**You can also ask, for example:**", ""]
        for spec in turn.tools:
            example = spec.examples[0] if spec.examples else spec.description
            change = " (asks for confirmation)" if spec.mutating else ""
            lines.append(f"- {example}{change}")
    else:
        lines += ["", "Your policy grants you no tools on this channel."]
    return TurnResult("\n".join(lines))


async def _whoami(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    tools = ", ".join(s.name for s in turn.tools) or "none"
    return TurnResult(
        f"You are **{turn.ctx.principal}** (control plane: {turn.ctx.act_as}) on "
        f"{turn.ctx.channel}, with roles {', '.join(turn.roles) or 'none'}.\n\nTools: {tools}."
    )


async def _pending(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    result = TurnResult("")
    waiting = await executor.store.pending_for(turn.ctx.principal)
    if waiting:
        rows = ["| confirmation | change | expires |", "|---|---|---|"]
        rows += [
            f"| `{c.id}` | {_cell(c.summary)} | {c.expires_at:%H:%M:%S} UTC |" for c in waiting
        ]
        parts = ["**Waiting for your confirmation**", "", *rows]
    else:
        parts = ["No confirmations are waiting for you."]
    if any(s.name == "pending_approvals" for s in turn.tools):
        outcomes = await _tool(executor, turn, emit, result, "pending_approvals", {})
        parts += ["", outcomes.text]
    result.reply = "\n".join(parts)
    return result


async def _approve(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    return await _decide(executor, turn, emit, args, "confirm")


async def _deny(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    return await _decide(executor, turn, emit, args, "deny")


async def _decide(
    executor: ToolExecutor,
    turn: Turn,
    emit: Emit,
    args: list[str],
    decision: Literal["confirm", "deny"],
) -> TurnResult:
    verb = "approve" if decision == "confirm" else "deny"
    if not args:
        return TurnResult(f"Usage: /{verb} ID (a confirmation cf_… or a CAB request apr_…).")
    target = args[0]
    if target.startswith("cf_"):
        decided, executed = await decide_confirmation(executor, turn.ctx, target, decision)
        result = TurnResult(describe_decision(decided, executed), confirmation=decided.confirmation)
        if executed is not None:
            result.outcomes.append(executed)
        if decided.confirmation is not None:
            current = await executor.store.confirmation(target)
            if current is not None:
                result.confirmation = current
                await emit(confirmation_event(current))
        return result
    comment = " ".join(args[1:])
    arguments = {"approval_id": target, "decision": verb, "comment": comment}
    result = TurnResult("")
    outcome = await _tool(executor, turn, emit, result, "decide_approval", arguments)
    result.reply = outcome.text
    return result


async def _drift(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    if not args:
        return TurnResult("Usage: /drift SCOPE (for example /drift web or /drift scp_contoso).")
    result = TurnResult("")
    result.reply = (
        await _tool(executor, turn, emit, result, "scope_drift", {"scope": " ".join(args)})
    ).text
    return result


async def _rollout(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    arguments: dict[str, Any] = {}
    if args:
        arguments["app"] = args[0]
    if len(args) > 1:
        arguments["version"] = args[1]
    result = TurnResult("")
    result.reply = (await _tool(executor, turn, emit, result, "rollout_status", arguments)).text
    return result


async def _cancel(executor: ToolExecutor, turn: Turn, emit: Emit, args: list[str]) -> TurnResult:
    waiting = [
        c
        for c in await executor.store.pending_for(turn.ctx.principal)
        if c.conversation_id == turn.ctx.conversation_id
    ]
    denied = []
    for confirmation in waiting:
        decided = await executor.decide(turn.ctx.principal, confirmation.id, "deny")
        if decided.outcome == "denied":
            denied.append(confirmation.summary)
    if not denied:
        return TurnResult("Nothing to cancel: no confirmation is waiting in this conversation.")
    return TurnResult("Cancelled: " + "; ".join(denied) + ". Nothing was changed.")


async def _tool(
    executor: ToolExecutor,
    turn: Turn,
    emit: Emit,
    result: TurnResult,
    name: str,
    arguments: dict[str, Any],
) -> ToolOutcome:
    """Run one tool call for a command through the loop's reporting (policy, audit, events)."""
    call = ToolCall(f"cmd-{len(result.outcomes) + 1}", name, arguments)
    (outcome,) = await run_calls(executor, turn, [call], result, emit)
    return outcome


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


_HANDLERS: Final[dict[str, Handler]] = {
    "/help": _help,
    "/whoami": _whoami,
    "/pending": _pending,
    "/approve": _approve,
    "/confirm": _approve,
    "/deny": _deny,
    "/drift": _drift,
    "/rollout": _rollout,
    "/cancel": _cancel,
}
