"""Tool ``pending_approvals``: what the principal may decide now (agent → tools → control plane)."""

from __future__ import annotations

from typing import Any

from tools.builtin.render import measure, quoted, table
from tools.registry import ToolContext, ToolResult, tool

_KEPT = (
    "id",
    "kind",
    "summary",
    "subject_type",
    "subject_id",
    "version_id",
    "ring",
    "requested_by",
    "reason",
    "risk_score",
    "requested_at",
    "expires_at",
)


@tool(
    "approval.read",
    examples=(
        "What is waiting for my approval?",
        "Show me the pending CAB requests",
        "Do I have any approvals or exceptions to decide?",
    ),
)
async def pending_approvals(ctx: ToolContext) -> ToolResult:
    """List the CAB requests and risk exceptions you may decide now (never your own requests).

    Each has the id to pass to decide_approval, what it asks, the ring it is for, who asked,
    the version's risk score and when it lapses.
    """
    pending = await ctx.cp.pending_approvals(ctx.act_as, request_id=ctx.request_id)
    items: list[dict[str, Any]] = [{k: item.get(k) for k in _KEPT} for item in pending.items]
    if not items:
        text = f"Nothing is waiting for a decision by {quoted(pending.principal, 100)}."
    else:
        # Few, short columns: the id must survive a narrow terminal whole, since people type
        # it back; the full reason stays in ``data``.
        rows = [
            (
                i["id"],
                str(i["summary"] or "")
                .removeprefix("CAB approval to ")
                .removeprefix("Risk exception for "),
                i["requested_by"],
                measure(i["risk_score"]),
                str(i["expires_at"] or "—")[:10],
            )
            for i in items
        ]
        headers = ("Id", "What", "Requested by", "Risk", "Expires")
        reasons = "\n".join(f"- {i['id']}: {quoted(i['reason'])}" for i in items if i["reason"])
        text = (
            f"{len(items)} waiting for a decision by {quoted(pending.principal, 100)}:\n\n"
            + table(headers, rows)
            + (f"\n\nWhy each needs a decision:\n\n{reasons}" if reasons else "")
            + "\n\nDecide one with its id: approve or deny, with a comment."
        )
    if pending.truncated:
        text += "\n\nMore CAB requests are waiting than this list holds."
    data = {"principal": pending.principal, "items": items, "truncated": pending.truncated}
    return ToolResult(data=data, text=text)
