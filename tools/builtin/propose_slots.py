"""Tool ``propose_slots``: the best common free times for a meeting (agent → tools → Graph).

For a person who signed in through single sign-on, Graph's own ``findMeetingTimes`` (delegated
only) proposes; otherwise, or when their delegated token is refused, the slots are computed
here (``tools.slots``) from ``getSchedule`` with the app's token.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tools.builtin.meetings import (
    graph_failures,
    graph_of,
    home_zone,
    mailbox,
    mailboxes,
    parse_day,
    slot_rows,
)
from tools.graph import GraphAuthError, GraphClient
from tools.registry import ToolContext, ToolInputError, ToolResult, tool
from tools.slots import Slot, availability_from_graph, free_slots, zone


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
    length, limit = timedelta(minutes=duration_minutes), max(1, min(count, 10))
    slots: list[Slot] | None = None
    source = "findMeetingTimes"
    if graph.signed_in(ctx.principal):
        slots = await _suggested(graph, ctx.principal, people, max(start, now), end, length, limit)
    if slots is None:
        source = "getSchedule"
        async with graph_failures():
            items = await graph.get_schedule(organizer, people, start, end, timezone=str(tz))
            found = [availability_from_graph(item, str(tz)) for item in items]
            slots = free_slots(found, start, end, length, tz, limit=limit, not_before=now)
    data = {
        "organizer": organizer,
        "attendees": people,
        "source": source,
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


async def _suggested(
    graph: GraphClient,
    user: str,
    people: list[str],
    start: datetime,
    end: datetime,
    length: timedelta,
    limit: int,
) -> list[Slot] | None:
    """Graph's ``findMeetingTimes`` suggestions; None when the delegated token is refused."""
    organizer, *others = people
    tz = start.tzinfo
    assert isinstance(tz, ZoneInfo)
    async with graph_failures():
        try:
            found = await graph.find_meeting_times(
                user, organizer, others, start, end, length, timezone=str(tz), max_candidates=limit
            )
        except GraphAuthError:
            return None  # the delegated token was refused or lost: the app's token will do
    return [
        Slot(_moment(s["meetingTimeSlot"]["start"]), _moment(s["meetingTimeSlot"]["end"]), 0)
        for s in found.get("meetingTimeSuggestions", [])
    ][:limit]


def _moment(value: dict[str, Any]) -> datetime:
    raw = str(value["dateTime"]).split(".")[0]
    return datetime.fromisoformat(raw).replace(tzinfo=zone(str(value.get("timeZone") or "UTC")))
