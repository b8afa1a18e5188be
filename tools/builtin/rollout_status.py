"""Tool ``rollout_status``: where rollouts stand and why, gate by gate (agent → tools →
control plane)."""

from __future__ import annotations

import asyncio
from typing import Any

from tools.builtin.render import measure, ring_label, table
from tools.builtin.resolve import IN_FLIGHT, app_rollouts, scope_path, version_key, version_of
from tools.registry import Json, ToolContext, ToolInputError, ToolResult, tool


@tool(
    "rollout.read",
    examples=(
        "What rollouts are in flight?",
        "How is the chrome rollout doing?",
        "Why is firefox 132 paused?",
    ),
)
async def rollout_status(
    ctx: ToolContext, app: str | None = None, version: str | None = None
) -> ToolResult:
    """Show rollouts: all of them in brief, or one application's with every gate measured now.

    Without an app: each rollout's application, version, ring, status and failed gates. With
    an app: its rollouts (only the version's when given), and for each one in flight every
    gate with the measured value, threshold, verdict and reason.

    Args:
        app: The application's name (``firefox``, ``google-chrome``, or a short name such as
            ``chrome``) or id; omit it to list every rollout.
        version: The version, exactly (``131.0.6778``) or by prefix (``131``); needs ``app``.
    """
    if app is None:
        if version is not None:
            raise ToolInputError("name the application of that version")
        return await _all(ctx)
    app_doc, versions, rollouts = await app_rollouts(ctx, app, version)
    live = await asyncio.gather(
        *(
            ctx.cp.rollout(ctx.act_as, r["id"], request_id=ctx.request_id)
            if r["intent_state"] in IN_FLIGHT
            else _same(r)
            for r in rollouts
        )
    )
    items = [_item(r, app_doc["name"], version_of(r, versions), gates=True) for r in live]
    items.sort(key=lambda i: version_key(i["version"]))
    if not items:
        text = f"{app_doc['name']} has no rollout you can see."
        return ToolResult(data={"app": _app(app_doc), "rollouts": []}, text=text)
    parts = [f"Rollouts of {app_doc['name']}:", _summary_table(items)]
    for item in items:
        if not item["gates"]:
            continue
        when = "measured now" if item["gates_live"] else f"recorded {item['gates_evaluated_at']}"
        ring = item["gates_ring"] if item["gates_ring"] is not None else item["ring"]
        parts.append(f"Gates of {app_doc['name']} {item['version']} in {ring_label(ring)}, {when}:")
        parts.append(
            table(
                ("Gate", "Kind", "Verdict", "Measured", "Threshold", "Reason"),
                [
                    (
                        g.get("name"),
                        g.get("kind"),
                        g.get("verdict"),
                        measure(g.get("measured")),
                        measure(g.get("threshold")),
                        g.get("reason"),
                    )
                    for g in item["gates"]
                ],
            )
        )
    targets = {r["target_scope_id"] for r in rollouts}
    path = await scope_path(ctx, targets.pop()) if len(targets) == 1 else ()
    data = {"app": _app(app_doc), "rollouts": items}
    return ToolResult(data=data, text="\n\n".join(parts), scope_path=path)


async def _same(rollout: Json) -> Json:
    return rollout


async def _all(ctx: ToolContext) -> ToolResult:
    rollouts = await ctx.cp.rollouts(ctx.act_as, request_id=ctx.request_id)
    apps = {a["id"]: a for a in await ctx.cp.apps(ctx.act_as, request_id=ctx.request_id)}
    app_ids = sorted({r["application_id"] for r in rollouts})
    lists = await asyncio.gather(
        *(ctx.cp.versions(ctx.act_as, a, request_id=ctx.request_id) for a in app_ids)
    )
    versions = {v["id"]: v for vs in lists for v in vs}
    items = [
        _item(
            r,
            str(apps.get(r["application_id"], {}).get("name", r["application_id"])),
            version_of(r, versions),
            gates=False,
        )
        for r in rollouts
    ]
    items.sort(key=lambda i: (i["app"], version_key(i["version"])))
    if not items:
        return ToolResult(data={"rollouts": []}, text="There is no rollout you can see.")
    text = f"{len(items)} rollouts:\n\n{_summary_table(items, with_app=True)}"
    return ToolResult(data={"rollouts": items}, text=text)


def _app(app: Json) -> dict[str, Any]:
    return {"id": app["id"], "name": app["name"]}


def _item(rollout: Json, app: str, version: Json, *, gates: bool) -> dict[str, Any]:
    recorded = list(rollout.get("gates") or [])
    item: dict[str, Any] = {
        "id": rollout["id"],
        "app": app,
        "app_id": rollout["application_id"],
        "version": version["version"],
        "version_id": rollout["version_id"],
        "ring": rollout["ring"],
        "ring_name": rollout["ring_name"],
        "status": rollout["status"],
        "intent_state": rollout["intent_state"],
        "target_scope_id": rollout["target_scope_id"],
        "paused_reason": rollout.get("paused_reason"),
        "failed_gates": [g.get("name") for g in recorded if g.get("verdict") == "failed"],
        "gates_ring": rollout.get("gates_ring"),
        "gates_evaluated_at": rollout.get("gates_evaluated_at"),
        "gates_live": bool(rollout.get("gates_live")),
    }
    if gates:
        item["gates"] = recorded
    return item


def _summary_table(items: list[dict[str, Any]], *, with_app: bool = False) -> str:
    headers = ("Version", "Ring", "Status", "State", "Failed gates", "Paused because")
    rows = [
        (
            i["version"],
            ring_label(i["ring"]),
            i["status"],
            i["intent_state"],
            ", ".join(i["failed_gates"]) or "none",
            i["paused_reason"] or "—",
        )
        for i in items
    ]
    if with_app:
        return table(
            ("App", *headers), [(i["app"], *row) for i, row in zip(items, rows, strict=True)]
        )
    return table(headers, rows)
