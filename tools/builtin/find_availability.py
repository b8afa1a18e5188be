"""Tool ``find_availability``: who is busy when on a day (agent → tools → Graph getSchedule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tools.builtin.meetings import (
    graph_failures,
    graph_of,
    home_zone,
    mailbox,
    mailboxes,
    parse_day,
    when,
)
from tools.registry import ToolContext, ToolResult, tool
from tools.slots import availability_from_graph


@tool(
    "calendar.read",
    examples=("Is li free tomorrow?", "Show ana's and li's calendars on tuesday"),
)
async def find_availability(
    ctx: ToolContext, attendees: list[str], day: str | None = None, days: int = 1
) -> ToolResult:
    """Show each person's busy times and working hours, in your time zone.

    Args:
        attendees: People by mailbox address or bare name (``li``).
        day: The first day: today, tomorrow, a weekday (``next tuesday``) or ``2026-06-16``.
        days: How many days to show (1-14).
    """
    graph = graph_of(ctx)
    organizer = mailbox(graph, ctx.principal)
    people = mailboxes(graph, attendees)
    span = max(1, min(days, 14))
    tz = await home_zone(graph, organizer)
    first = parse_day(day, datetime.now(tz).date())
    start = datetime.combine(first, datetime.min.time(), tz)
    end = datetime.combine(first + timedelta(days=span), datetime.min.time(), tz)
    async with graph_failures():
        items = await graph.get_schedule(organizer, people, start, end, timezone=str(tz))
        found = [availability_from_graph(item, str(tz)) for item in items]
    lines = [f"Calendars from {start:%a %d %b %Y} for {span} day(s), times in {tz}:", ""]
    lines += ["| person | working hours | busy |", "|---|---|---|"]
    data = []
    for person in found:
        hours = person.hours
        busy = [(b0.astimezone(tz), b1.astimezone(tz)) for b0, b1 in person.busy]
        shown = "; ".join(when(b0, b1) for b0, b1 in busy) or "free"
        lines.append(
            f"| {person.address} | {hours.start:%H:%M}-{hours.end:%H:%M} {hours.tz} | {shown} |"
        )
        data.append(
            {
                "address": person.address,
                "time_zone": str(hours.tz),
                "working_hours": [hours.start.isoformat(), hours.end.isoformat()],
                "busy": [[b0.isoformat(), b1.isoformat()] for b0, b1 in busy],
            }
        )
    return ToolResult(
        data={"start": start.astimezone(UTC).isoformat(), "days": span, "people": data},
        text="\n".join(lines),
    )
