"""Tool ``propose_slots``: the best common free times for a meeting (agent → tools → Graph)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tools.builtin.meetings import (
    graph_failures,
    graph_of,
    home_zone,
    mailbox,
    mailboxes,
    parse_day,
    slot_rows,
)
from tools.registry import ToolContext, ToolInputError, ToolResult, tool
from tools.slots import availability_from_graph, free_slots


@tool(
    "calendar.read",
    examples=("When can ana, li and omar meet for an hour this week?", "Find 30 minutes with li"),
)
async def propose_slots(
    ctx: ToolContext,
    attendees: list[str],
    duration_minutes: int = 30,
    day: str | None = None,
    days: int = 5,
    count: int = 5,
) -> ToolResult:
    """Propose the best times when you and the attendees are all free and at work.

    Slots respect each person's working hours in their own time zone and are shown in yours;
    the fewer people a slot puts at the edge of their day, the higher it ranks.

    Args:
        attendees: People by mailbox address or bare name (``li``); you are added.
        duration_minutes: Meeting length in minutes (15-480).
        day: The first day to search: today, tomorrow, a weekday or ``2026-06-16``.
        days: How many days to search (1-14).
        count: How many slots to propose (1-10).
    """
    if not 15 <= duration_minutes <= 480:
        raise ToolInputError("a meeting lasts between 15 and 480 minutes")
    graph = graph_of(ctx)
    organizer = mailbox(graph, ctx.principal)
    people = mailboxes(graph, [organizer, *attendees])
    tz = await home_zone(graph, organizer)
    now = datetime.now(tz)
    first = parse_day(day, now.date())
    start = datetime.combine(first, datetime.min.time(), tz)
    end = datetime.combine(first + timedelta(days=max(1, min(days, 14))), datetime.min.time(), tz)
    async with graph_failures():
        items = await graph.get_schedule(organizer, people, start, end, timezone=str(tz))
        found = [availability_from_graph(item, str(tz)) for item in items]
        slots = free_slots(
            found,
            start,
            end,
            timedelta(minutes=duration_minutes),
            tz,
            limit=max(1, min(count, 10)),
            not_before=now,
        )
    data = {
        "organizer": organizer,
        "attendees": people,
        "time_zone": str(tz),
        "slots": [
            {"start": s.start.isoformat(), "end": s.end.isoformat(), "edge": s.edge} for s in slots
        ],
    }
    if not slots:
        text = f"No {duration_minutes}-minute slot suits {', '.join(people)} from {first}."
        return ToolResult(data=data, text=text)
    lines = [f"{duration_minutes}-minute slots for {', '.join(people)}, best first:", ""]
    lines += slot_rows(slots)
    lines += ["", "Book one with book_meeting (its start as shown)."]
    return ToolResult(data=data, text="\n".join(lines))
