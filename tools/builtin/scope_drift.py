"""Tool ``scope_drift``: compliance and drift counts of a scope's subtree (agent → tools →
control plane)."""

from __future__ import annotations

from typing import Any

from tools.builtin.render import table
from tools.builtin.resolve import find_scope, path_ids
from tools.registry import ToolContext, ToolResult, tool


@tool(
    "drift.read",
    examples=(
        "How much drift does the web team have?",
        "Compliance of the engineering department",
        "Show drift counts for scp_engineering_web",
    ),
)
async def scope_drift(ctx: ToolContext, scope: str) -> ToolResult:
    """Show a scope's compliance: its devices counted by state and by drift category.

    Covers the scope and everything under it.

    Args:
        scope: The scope's name as people say it (``web``, ``the web team``, ``engineering``,
            ``Engineering department``) or its id (``scp_engineering_web``). A trailing level
            word (organization, department, team, environment, group) narrows by level.
    """
    found = await find_scope(ctx, scope)
    counts = await ctx.cp.scope_compliance(ctx.act_as, found["id"], request_id=ctx.request_id)
    states: dict[str, Any] = dict(counts.get("states") or {})
    categories: dict[str, Any] = dict(counts.get("categories") or {})
    devices = int(counts.get("devices") or 0)
    summary = table(
        ("Scope", "Level", "Devices", "Counted at"),
        [(found["name"], found["level"], devices, counts.get("updated_at") or "never")],
    )
    text = f"Compliance of scope {found['id']} and everything under it:\n\n{summary}"
    if devices:
        by_state = sorted(states.items(), key=lambda kv: -int(kv[1]))
        by_category = sorted(categories.items(), key=lambda kv: -int(kv[1]))
        text += "\n\n" + table(("State", "Devices"), by_state)
        text += "\n\n" + table(("Drift category", "Findings"), by_category)
    data = {
        "scope": {k: found.get(k) for k in ("id", "name", "level", "parent_id", "path")},
        "compliance": counts,
    }
    return ToolResult(data=data, text=text, scope_path=path_ids(str(found["path"])))
