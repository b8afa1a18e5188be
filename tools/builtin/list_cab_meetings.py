"""Tool ``list_cab_meetings``: the CAB meetings coming up in your calendar (tools → Graph).

Subjects and organizers are whatever people typed into an invitation: they are shown as data,
each in a table cell (``render.cell``), never as text a model could take for instructions.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

from tools.builtin.meetings import graph_failures, graph_of, home_zone, mailbox, when
from tools.builtin.render import table
from tools.registry import ToolContext, ToolResult, tool
from tools.slots import zone

_CAB: Final = re.compile(r"\bcab\b|change advisory", re.IGNORECASE)


@tool("calendar.read", examples=("When is the next CAB meeting?", "List CAB meetings"))
async def list_cab_meetings(ctx: ToolContext, days: int = 14) -> ToolResult:
    """List the change advisory board (CAB) meetings in your calendar over the coming days.

    Args:
        days: How many days ahead to look (1-60).
    """
    graph = graph_of(ctx)
    user = mailbox(graph, ctx.principal)
    tz = await home_zone(graph, user)
    start = datetime.now(tz)
    end = start + timedelta(days=max(1, min(days, 60)))
    async with graph_failures():
        events = await graph.calendar_view(user, start, end, timezone=str(tz))
    cab = [e for e in events if _CAB.search(str(e.get("subject", "")))]
    rows = []
    for event in cab:
        s = datetime.fromisoformat(event["start"]["dateTime"][:19]).replace(
            tzinfo=zone(event["start"].get("timeZone") or str(tz))
        )
        e = datetime.fromisoformat(event["end"]["dateTime"][:19]).replace(
            tzinfo=zone(event["end"].get("timeZone") or str(tz))
        )
        rows.append(
            {
                "subject": event.get("subject"),
                "start": s.astimezone(tz).isoformat(),
                "end": e.astimezone(tz).isoformat(),
                "organizer": ((event.get("organizer") or {}).get("emailAddress") or {}).get(
                    "address"
                ),
                "join_url": (event.get("onlineMeeting") or {}).get("joinUrl"),
                "_when": when(s.astimezone(tz), e.astimezone(tz)),
            }
        )
    if not rows:
        return ToolResult(data={"meetings": []}, text=f"No CAB meeting in the next {days} days.")
    text = table(
        ("when", "subject", "organizer"),
        [(r.pop("_when"), r["subject"], r["organizer"] or "") for r in rows],
    )
    return ToolResult(data={"meetings": rows}, text=text)
