"""Tool ``resume_rollout``: let a paused rollout move again (agent → tools → control plane)."""

from __future__ import annotations

from tools.builtin.render import quoted, ring_label
from tools.builtin.resolve import best_effort_path, check_reason, find_rollout, verb_arguments
from tools.registry import Json, Proposal, ToolContext, ToolInputError, ToolResult, tool


@tool(
    "ring.resume",
    mutating=True,
    examples=(
        "Resume firefox 132",
        "Resume the paused firefox rollout: the crash was a test device",
        "Unpause google-chrome",
    ),
)
async def resume_rollout(
    ctx: ToolContext, app: str, version: str | None = None, reason: str = ""
) -> Proposal:
    """Resume an application's paused rollout, once you confirm.

    The control plane measures the ring's gates again; if a health gate still fails the
    rollout runs on, marked Degraded, because a person chose to resume it.

    Args:
        app: The application's name (``firefox``, or a short name such as ``chrome``) or id.
        version: The version, exactly (``132.0.0``) or by prefix (``132``); needed only when
            the app has several rollouts in flight.
        reason: Why, in the person's words; recorded in the rollout's history (at most 500
            characters, may be empty).
    """
    reason = check_reason(reason, required=False)
    target = await find_rollout(ctx, app, version)
    rollout = target.rollout
    if rollout["intent_state"] != "paused":
        raise ToolInputError(f"{target.label} is not paused; it is {rollout['status']}")
    why = rollout.get("paused_reason")
    summary = f"Resume {target.label} in {ring_label(rollout['ring'])}"
    if why:
        summary += f", paused because {quoted(why, 200)}"
    return Proposal(
        arguments=verb_arguments(target, reason),
        summary=summary,
        scope_path=target.scope_path,
    )


@resume_rollout.executor
async def _resume(ctx: ToolContext, arguments: Json) -> ToolResult:
    doc = await ctx.cp.resume(
        ctx.act_as,
        arguments["rollout_id"],
        arguments["reason"],
        idempotency_key=ctx.idempotency_key,
        request_id=ctx.request_id,
    )
    failed = [g.get("name") for g in doc.get("gates") or [] if g.get("verdict") == "failed"]
    text = (
        f"Resumed {arguments['app']} {arguments['version']} in {ring_label(doc['ring'])}; "
        f"it is {doc['status']}."
    )
    if failed:
        text += " Gates still failing: " + ", ".join(str(n) for n in failed) + "."
    path = await best_effort_path(ctx, [doc["target_scope_id"]])
    return ToolResult(data=doc, text=text, scope_path=path)
