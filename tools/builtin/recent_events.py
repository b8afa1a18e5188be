"""Tool ``recent_events``: the newest audit events, for a scope or a device (agent → tools →
control plane)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tools.builtin.render import one_line, table
from tools.builtin.resolve import common_scope_path, find_device, find_scope, path_ids
from tools.registry import Json, ToolContext, ToolInputError, ToolResult, tool

LIMIT_MAX: Final = 50
"""Most events one answer lists."""
WINDOWS: Final = (timedelta(days=1), timedelta(days=30), None)
"""How far back the newest events are looked for, widened in turn (None: from the start)."""
_DETAIL_KEYS: Final = 6
"""Most ``data`` entries shown per event (the rest stay in ``data``)."""


@tool(
    "events.read",
    examples=(
        "What happened recently?",
        "Show the last 20 events for mac-00001",
        "Recent events of the engineering department",
    ),
)
async def recent_events(
    ctx: ToolContext, scope: str | None = None, device: str | None = None, limit: int = 10
) -> ToolResult:
    """List the newest audit events, newest first: everything, or those recorded against one
    scope or one device.

    Reading the audit trail needs a principal whose scope is the whole organization.

    Args:
        scope: Only events recorded against this scope (not its children): a name as people
            say it (``web``, ``the engineering department``) or an id (``scp_engineering``).
        device: Only events about this device: a name (``mac-00001``) or id (``dev_000001``).
        limit: How many events, 1 to 50 (10 when omitted).
    """
    if not 1 <= limit <= LIMIT_MAX:
        raise ToolInputError(f"limit must be between 1 and {LIMIT_MAX}, not {limit}")
    scope_doc = await find_scope(ctx, scope) if scope is not None else None
    device_doc = await find_device(ctx, device) if device is not None else None
    events: list[Json] = []
    now = datetime.now(UTC)
    for window in WINDOWS:
        # The API lists oldest first and the client reads a bounded number of pages forward,
        # so "newest" is read from a recent start, widened only when that holds too few.
        events = await ctx.cp.events(
            ctx.act_as,
            scope_id=scope_doc["id"] if scope_doc else None,
            device_id=device_doc["id"] if device_doc else None,
            since=None if window is None else now - window,
            limit=limit,
            request_id=ctx.request_id,
        )
        if len(events) >= limit:
            break
    events = list(reversed(events))
    if scope_doc is not None:
        path = path_ids(str(scope_doc["path"]))
    elif device_doc is not None:
        path = await common_scope_path(ctx, device_doc.get("scope_ids") or [])
    else:
        path = ()
    about = " and ".join(
        f"{kind} {doc['id']}" for kind, doc in (("scope", scope_doc), ("device", device_doc)) if doc
    )
    where = f" for {about}" if about else ""
    if not events:
        return ToolResult(data={"events": []}, text=f"No events{where}.", scope_path=path)
    rows = [
        (
            e.get("seq"),
            e.get("timestamp"),
            e.get("type"),
            e.get("action"),
            e.get("outcome"),
            e.get("actor"),
            e.get("device_id") or e.get("scope_id") or "—",
            _details(e.get("data")),
        )
        for e in events
    ]
    headers = ("Seq", "Time", "Type", "Action", "Outcome", "Actor", "About", "Details")
    text = f"The {len(events)} newest events{where}, newest first:\n\n{table(headers, rows)}"
    return ToolResult(data={"events": events}, text=text, scope_path=path)


def _details(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    shown = [
        f"{k}={one_line(v, 60)}"
        for k, v in data.items()
        if isinstance(v, str | int | float | bool) and v != ""
    ][:_DETAIL_KEYS]
    return one_line("; ".join(shown), 200)
