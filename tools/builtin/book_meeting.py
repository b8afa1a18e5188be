"""Tool ``book_meeting``: put a meeting in the calendars, once confirmed (agent → tools → Graph).

Policy: ``calendar.book`` lets a principal book as themselves (their mailbox is their name in
``graph.domain``); booking as another organizer also needs ``calendar.book_as``; every
attendee must be in ``graph.allowed_domains``. All three are checked before any Graph call and
again when the confirmed booking runs. The subject goes through the guard's redaction before
it is proposed, and the body is built here from the subject and names only, so no secret a
person pasted reaches the invitation.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from tools.builtin.meetings import (
    BOOK_AS,
    graph_failures,
    graph_of,
    home_zone,
    mailbox,
    mailboxes,
    parse_day,
    parse_moment,
    when,
)
from tools.builtin.render import quoted
from tools.graph import GraphClient
from tools.registry import Json, Proposal, ToolContext, ToolInputError, ToolResult, tool
from tools.slots import availability_from_graph, free_slots

_TRANSACTIONS: Final = uuid.UUID("5f0c6a53-3f43-4d59-9d0c-7f8f4b1e9a21")
"""Namespace of the ``transactionId`` derived from a confirmation's idempotency key."""


@tool(
    "calendar.book",
    mutating=True,
    idempotent=True,
    examples=("Book a CAB review with ana and li on tuesday at 15:00",),
)
async def book_meeting(
    ctx: ToolContext,
    attendees: list[str],
    subject: str,
    start: str | None = None,
    day: str | None = None,
    duration_minutes: int = 30,
    online: bool = True,
    organizer: str | None = None,
) -> Proposal:
    """Book a meeting you organize with the attendees, once you confirm.

    Give ``start`` for an exact time, or ``day`` to take the best slot that day when everyone
    is free and at work; the confirmation shows the exact time either way.

    Args:
        attendees: People by mailbox address or bare name (``li``); each must be in an allowed
            domain.
        subject: The meeting's subject.
        start: Start as ``2026-06-16T15:00``, in your time zone unless it carries an offset.
        day: Without ``start``: today, tomorrow, a weekday (``next tuesday``) or ``2026-06-16``.
        duration_minutes: Meeting length in minutes (15-480).
        online: Add a Teams meeting link.
        organizer: Book in someone else's calendar (their mailbox or name); only with the
            ``calendar.book_as`` grant. Default: yours.
    """
    if not 15 <= duration_minutes <= 480:
        raise ToolInputError("a meeting lasts between 15 and 480 minutes")
    title = ctx.guard.redact(" ".join(subject.split()))
    if not 1 <= len(title) <= 255:
        raise ToolInputError("the subject must be 1 to 255 characters")
    graph = graph_of(ctx)
    organizer = _organizer(ctx, graph, organizer)
    people = [a for a in mailboxes(graph, attendees) if a != organizer]
    if not people:
        raise ToolInputError("name at least one attendee besides you")
    tz = await home_zone(graph, organizer)
    length = timedelta(minutes=duration_minutes)
    if start is None:
        begin = await _best_slot(graph, organizer, [organizer, *people], day, length, tz)
    else:
        begin = parse_moment(start, tz)
    if begin <= datetime.now(UTC):
        raise ToolInputError(f"{start} is in the past")
    end = begin + length
    async with graph_failures():
        items = await graph.get_schedule(organizer, [organizer, *people], begin, end)
        busy = [
            a.address
            for a in (availability_from_graph(item, "UTC") for item in items)
            if any(b0 < end and begin < b1 for b0, b1 in a.busy)
        ]
    local_begin, local_end = begin.astimezone(tz), end.astimezone(tz)
    note = f" (busy then: {', '.join(busy)})" if busy else ""
    return Proposal(
        arguments={
            "organizer": organizer,
            "attendees": people,
            "subject": title,
            "start": local_begin.isoformat(),
            "end": local_end.isoformat(),
            "time_zone": str(tz),
            "online": online,
            "busy": busy,
        },
        summary=(
            f"Book {quoted(title, 255)} {when(local_begin, local_end)} with {', '.join(people)}"
            f"{', online' if online else ''}{note}"
        ),
    )


def _organizer(ctx: ToolContext, graph: GraphClient, asked: str | None) -> str:
    """The principal's own mailbox, or another one when the policy grants ``calendar.book_as``."""
    own = mailbox(graph, ctx.principal)
    if asked is None or mailbox(graph, asked) == own:
        return own
    verdict = ctx.guard.authorize(BOOK_AS, None)
    if not verdict.allowed:
        raise ToolInputError(f"you may book only as yourself ({own}): {verdict.reason}")
    (other,) = mailboxes(graph, [asked])
    return other


async def _best_slot(
    graph: GraphClient,
    organizer: str,
    people: list[str],
    day: str | None,
    length: timedelta,
    tz: ZoneInfo,
) -> datetime:
    now = datetime.now(tz)
    first = parse_day(day, now.date())
    start = datetime.combine(first, datetime.min.time(), tz)
    end = start + timedelta(days=1)
    async with graph_failures():
        items = await graph.get_schedule(organizer, people, start, end, timezone=str(tz))
        found = [availability_from_graph(item, str(tz)) for item in items]
        slots = free_slots(found, start, end, length, tz, limit=1, not_before=now)
    if not slots:
        raise ToolInputError(
            f"no {int(length.total_seconds() // 60)}-minute slot suits {', '.join(people)} "
            f"on {first:%a %d %b %Y}; ask propose_slots for other days"
        )
    return slots[0].start


@book_meeting.executor
async def _book(ctx: ToolContext, arguments: Json) -> ToolResult:
    graph = graph_of(ctx)
    # The policy and the domains may have narrowed since the proposal.
    _organizer(ctx, graph, arguments["organizer"])
    mailboxes(graph, arguments["attendees"])
    key = ctx.idempotency_key or uuid.uuid4().hex
    transaction_id = str(uuid.uuid5(_TRANSACTIONS, key))
    zone_name = arguments["time_zone"]
    tz = ZoneInfo(zone_name)
    start = datetime.fromisoformat(arguments["start"]).astimezone(tz)
    end = datetime.fromisoformat(arguments["end"]).astimezone(tz)
    subject = ctx.guard.redact(arguments["subject"])
    body = (
        f"{subject}\n\nBooked with goodbot for {ctx.principal}, who confirmed it. "
        f"Invited: {', '.join(arguments['attendees'])}."
    )
    event: Json = {
        "subject": subject,
        "body": {"contentType": "text", "content": ctx.guard.redact(body)},
        "start": {"dateTime": start.replace(tzinfo=None).isoformat(), "timeZone": zone_name},
        "end": {"dateTime": end.replace(tzinfo=None).isoformat(), "timeZone": zone_name},
        "attendees": [
            {"emailAddress": {"address": a}, "type": "required"} for a in arguments["attendees"]
        ],
        "isOnlineMeeting": bool(arguments["online"]),
        "allowNewTimeProposals": True,
    }
    if arguments["online"]:
        event["onlineMeetingProvider"] = "teamsForBusiness"
    async with graph_failures():
        doc = await graph.create_event(
            arguments["organizer"], event, transaction_id, timezone=zone_name
        )
    join = (doc.get("onlineMeeting") or {}).get("joinUrl")
    people = ", ".join(arguments["attendees"])
    text = f"Booked {quoted(subject, 255)} {when(start, end)} with {people}."
    if join:
        text += f" Join: {join}"
    return ToolResult(
        data={
            "event_id": doc.get("id"),
            "transaction_id": transaction_id,
            "web_link": doc.get("webLink"),
            "join_url": join,
            **arguments,
        },
        text=text,
    )
