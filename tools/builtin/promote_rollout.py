"""Tool ``promote_rollout``: move a rollout into its next ring (agent → tools → control plane)."""

from __future__ import annotations

from tools.builtin.render import RINGS, quoted, ring_label
from tools.builtin.resolve import LAST_RING, best_effort_path, find_rollout, parse_ring
from tools.registry import Json, Proposal, ToolContext, ToolInputError, ToolResult, tool


@tool(
    "ring.promote",
    mutating=True,
    examples=(
        "Promote chrome to pilot",
        "Move firefox 131 to the next ring",
        "Promote google-chrome 131.0.6778",
    ),
)
async def promote_rollout(
    ctx: ToolContext, app: str, version: str | None = None, to_ring: str | None = None
) -> Proposal:
    """Promote an application's rollout into its next ring, once you confirm.

    The control plane measures every gate again when the promotion runs and refuses it if one
    fails (a failed health gate pauses the rollout; a missing CAB approval is requested).

    Args:
        app: The application's name (``google-chrome``, or a short name such as ``chrome``)
            or id.
        version: The version, exactly (``131.0.6778``) or by prefix (``131``); needed only
            when the app has several rollouts in flight.
        to_ring: The ring to promote into, by name (lab, canary, pilot, department, global) or
            number (0-4); it must be the next ring. Omit it to mean the next ring.
    """
    target = await find_rollout(ctx, app, version)
    rollout, label = target.rollout, target.label
    ring = int(rollout["ring"])
    if rollout["intent_state"] == "paused":
        reason = rollout.get("paused_reason")
        why = f" ({quoted(reason)})" if reason else ""
        raise ToolInputError(f"{label} is paused{why}; resume it first")
    if ring >= LAST_RING:
        raise ToolInputError(
            f"{label} is in {ring_label(ring)}, the last ring; there is no ring to promote it to"
        )
    to = ring + 1
    if to_ring is not None and parse_ring(to_ring) != to:
        raise ToolInputError(
            f"{label} is in {ring_label(ring)}; it can go only to the next ring, "
            f"{ring_label(to)}, not {ring_label(parse_ring(to_ring))}"
        )
    return Proposal(
        arguments={
            "rollout_id": rollout["id"],
            "app": target.app["name"],
            "version": target.version["version"],
            "from_ring": ring,
            "from_ring_name": RINGS[ring],
            "to_ring": to,
            "to_ring_name": RINGS[to],
        },
        summary=f"Promote {label} from {ring_label(ring)} to {ring_label(to)}",
        scope_path=target.scope_path,
    )


@promote_rollout.executor
async def _promote(ctx: ToolContext, arguments: Json) -> ToolResult:
    doc = await ctx.cp.promote(
        ctx.act_as,
        arguments["rollout_id"],
        arguments["from_ring"],
        idempotency_key=ctx.idempotency_key,
        request_id=ctx.request_id,
    )
    text = (
        f"Promoted {arguments['app']} {arguments['version']} from "
        f"{ring_label(arguments['from_ring'])} to {ring_label(doc['ring'])}; "
        f"it is {doc['status']}."
    )
    if doc.get("intent_state") == "completed":
        text = f"{arguments['app']} {arguments['version']} completed its rollout."
    path = await best_effort_path(ctx, [doc["target_scope_id"]])
    return ToolResult(data=doc, text=text, scope_path=path)
