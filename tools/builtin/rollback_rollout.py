"""Tool ``rollback_rollout``: undo a rollout's installs (agent → tools → control plane)."""

from __future__ import annotations

from tools.builtin.render import quoted, ring_label
from tools.builtin.resolve import best_effort_path, check_reason, find_rollout, verb_arguments
from tools.registry import Json, Proposal, ToolContext, ToolResult, tool


@tool(
    "ring.rollback",
    mutating=True,
    destructive=True,
    examples=(
        "Roll back firefox 132",
        "Roll back the chrome rollout: it breaks the VPN client",
        "Undo google-chrome 131.0.6778 everywhere",
    ),
)
async def rollback_rollout(
    ctx: ToolContext, app: str, version: str | None = None, reason: str = "rolled back from chat"
) -> Proposal:
    """Roll back an application's rollout, once you confirm: every install it made is undone.

    Devices go back to the version they had before. This ends the rollout; it cannot be
    resumed afterwards.

    Args:
        app: The application's name (``firefox``, or a short name such as ``chrome``) or id.
        version: The version, exactly (``132.0.0``) or by prefix (``132``); needed when the
            app has several rollouts in flight, or to roll back a completed one.
        reason: Why, in the person's words; recorded in the rollout's history (1-500
            characters).
    """
    reason = check_reason(reason, required=True)
    target = await find_rollout(ctx, app, version, completed=version is not None)
    rollout = target.rollout
    where = ring_label(rollout["ring"])
    return Proposal(
        arguments=verb_arguments(target, reason),
        summary=(
            f"Roll back {target.label} in {where}, undoing every install it made: "
            f"{quoted(reason, 200)}"
        ),
        scope_path=target.scope_path,
    )


@rollback_rollout.executor
async def _rollback(ctx: ToolContext, arguments: Json) -> ToolResult:
    doc = await ctx.cp.rollback(
        ctx.act_as,
        arguments["rollout_id"],
        arguments["reason"],
        idempotency_key=ctx.idempotency_key,
        request_id=ctx.request_id,
    )
    last = (doc.get("history") or [{}])[-1]
    undone = last.get("installs") if last.get("action") == "rollback" else None
    text = f"Rolled back {arguments['app']} {arguments['version']}; it is {doc['status']}."
    if undone is not None:
        text += f" {undone} installs were undone."
    path = await best_effort_path(ctx, [doc["target_scope_id"]])
    return ToolResult(data=doc, text=text, scope_path=path)
