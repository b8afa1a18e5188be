"""Helpers of the calendar tools: mailboxes, days, zones and Graph failures (tools → Graph)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from tools.graph import GraphClient, GraphError
from tools.registry import ToolContext, ToolInputError
from tools.slots import DAYS, Slot, SlotError, zone

BOOK_AS: Final = "calendar.book_as"
"""The policy action that lets a principal book in another organizer's calendar."""
_NAME: Final = re.compile(r"^[a-z0-9._%+'-]+$")
_ADDRESS: Final = re.compile(r"^[a-z0-9._%+'-]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")


def graph_of(ctx: ToolContext) -> GraphClient:
    """The Graph client, or a ``ToolInputError`` saying calendars are not set up."""
    if ctx.graph is None:
        raise ToolInputError("calendars are not available: Microsoft Graph is not configured")
    return ctx.graph


def mailbox(graph: GraphClient, name: str) -> str:
    """A person's mailbox: an address as given, or a bare name completed with the domain."""
    text = name.strip().lower()
    if _ADDRESS.match(text):
        return text
    if _NAME.match(text) and graph.domain:
        return f"{text}@{graph.domain}"
    raise ToolInputError(f"{name!r} is not a mailbox address")


def mailboxes(graph: GraphClient, names: Iterable[str]) -> list[str]:
    """Mailboxes for ``names``, de-duplicated, each in an allowed domain."""
    found = list(dict.fromkeys(mailbox(graph, n) for n in names))
    if not found:
        raise ToolInputError("name at least one attendee")
    allowed = graph.allowed_domains
    outside = [a for a in found if allowed and a.rsplit("@", 1)[1] not in allowed]
    if outside:
        raise ToolInputError(
            f"{', '.join(outside)} {'is' if len(outside) == 1 else 'are'} outside the allowed "
            f"domains ({', '.join(sorted(allowed))})"
        )
    return found


def parse_day(text: str | None, today: date) -> date:
    """``today``, ``tomorrow``, a weekday (``tuesday``, ``next tuesday``) or an ISO date."""
    words = (text or "today").strip().lower()
    if words == "today":
        return today
    if words == "tomorrow":
        return today + timedelta(days=1)
    name = words.removeprefix("next ").strip()
    if name in DAYS:
        ahead = (DAYS.index(name) - today.weekday()) % 7 or 7
        return today + timedelta(days=ahead)
    try:
        return date.fromisoformat(words)
    except ValueError:
        raise ToolInputError(
            f"{text!r} is not a day (use today, tomorrow, a weekday or 2026-06-16)"
        ) from None


def parse_moment(text: str, tz: ZoneInfo) -> datetime:
    """An ISO date and time; one without an offset is read in ``tz``."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ToolInputError(f"{text!r} is not a date and time like 2026-06-16T15:00") from None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


async def home_zone(graph: GraphClient, user: str) -> ZoneInfo:
    """The zone the user's mailbox settings name (UTC when they name none)."""
    async with graph_failures():
        settings = await graph.mailbox_settings(user)
    try:
        return zone(str(settings.get("timeZone") or "UTC"))
    except SlotError:
        return ZoneInfo("UTC")


@asynccontextmanager
async def graph_failures() -> AsyncIterator[None]:
    """Turn a Graph or slot failure into a ``ToolInputError`` with a sentence for the person."""
    try:
        yield
    except GraphError as exc:
        hint = f" (Graph request id {exc.request_id})" if exc.request_id else ""
        raise ToolInputError(f"Microsoft Graph: {exc.message}{hint}") from None
    except SlotError as exc:
        raise ToolInputError(str(exc)) from None


def when(slot_start: datetime, slot_end: datetime) -> str:
    """``Tue 16 Jun 2026 15:00-15:30 CEST``."""
    return f"{slot_start:%a %d %b %Y %H:%M}-{slot_end:%H:%M} {slot_start.tzname()}"


def slot_rows(slots: Sequence[Slot]) -> list[str]:
    """A Markdown table of slots, numbered."""
    rows = ["| # | when |", "|---|---|"]
    rows += [f"| {i} | {when(s.start, s.end)} |" for i, s in enumerate(slots, 1)]
    return rows
