"""Tool ``pause_rollout``: stop a rollout where it is (agent → tools → control plane)."""

from __future__ import annotations

from tools.builtin.render import quoted, ring_label
from tools.builtin.resolve import best_effort_path, check_reason, find_rollout, verb_arguments
from tools.registry import Json, Proposal, ToolContext, ToolInputError, ToolResult, tool


@tool(
    "ring.pause",
    mutating=True,
    idempotent=True,
    examples=(
        "Pause the chrome rollout",
        "Stop firefox 131 where it is: users report crashes",
        "Pause google-chrome 131.0.6778",
    ),
)
async def pause_rollout(
    ctx: ToolContext, app: str, version: str | None = None, reason: str = "paused from chat"
) -> Proposal:
    """Pause an application's rollout in its current ring, once you confirm.

    Nothing more is installed and no promotion happens until it is resumed; devices keep
    what they have.

    Args:
        app: The application's name (``google-chrome``, or a short name such as ``chrome``)
            or id.
        version: The version, exactly (``131.0.6778``) or by prefix (``131``); needed only
            when the app has several rollouts in flight.
        reason: Why, in the person's words; recorded in the rollout's history (1-500
            characters).
    """
    reason = check_reason(reason, required=True)
    target = await find_rollout(ctx, app, version)
    rollout = target.rollout
    if rollout["intent_state"] == "paused":
        why = rollout.get("paused_reason")
        raise ToolInputError(
            f"{target.label} is paused already" + (f": {quoted(why)}" if why else "")
        )
    return Proposal(
        arguments=verb_arguments(target, reason),
        summary=f"Pause {target.label} in {ring_label(rollout['ring'])}: {quoted(reason, 200)}",
        scope_path=target.scope_path,
    )


@pause_rollout.executor
async def _pause(ctx: ToolContext, arguments: Json) -> ToolResult:
    doc = await ctx.cp.pause(
        ctx.act_as,
        arguments["rollout_id"],
        arguments["reason"],
        idempotency_key=ctx.idempotency_key,
        request_id=ctx.request_id,
    )
    text = (
        f"Paused {arguments['app']} {arguments['version']} in {ring_label(doc['ring'])}; "
        f"it is {doc['status']}."
    )
    path = await best_effort_path(ctx, [doc["target_scope_id"]])
    return ToolResult(data=doc, text=text, scope_path=path)
