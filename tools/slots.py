"""Meeting slots: free times common to several people, from Graph free/busy (tools, pure).

Everything is computed on absolute (UTC) instants and only compared in each person's own zone,
so a week with a daylight-saving change keeps 09:00 meaning 09:00 for each of them. Graph's
``getSchedule`` answers with ``scheduleItems`` (busy times) and ``workingHours`` per person;
``availability_from_graph`` turns one answer item into an ``Availability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

BUSY_STATUSES: Final = frozenset({"busy", "oof", "tentative"})
"""Free/busy statuses that keep a slot from being proposed (``workingElsewhere`` is free)."""
DAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WINDOWS_ZONES: Final = {
    "UTC": "UTC",
    "Coordinated Universal Time": "UTC",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "Central European Standard Time": "Europe/Warsaw",
    "E. Europe Standard Time": "Europe/Chisinau",
    "FLE Standard Time": "Europe/Kiev",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "Pacific Standard Time": "America/Los_Angeles",
    "India Standard Time": "Asia/Kolkata",
    "China Standard Time": "Asia/Shanghai",
    "Tokyo Standard Time": "Asia/Tokyo",
    "AUS Eastern Standard Time": "Australia/Sydney",
}
"""Windows zone names Exchange uses, for the common ones (IANA names are accepted as they are)."""


class SlotError(ValueError):
    """A request slots cannot be computed for (an unknown zone, an empty window)."""


def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA or (common) Windows zone name; ``SlotError`` otherwise."""
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except (ZoneInfoNotFoundError, ValueError):
        raise SlotError(f"unknown time zone {name!r}") from None


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """When a person works, in their own zone."""

    days: frozenset[int]
    """Weekdays worked, Monday 0 to Sunday 6."""
    start: time
    """Local start of the working day."""
    end: time
    """Local end of the working day."""
    tz: ZoneInfo
    """The person's zone."""


DEFAULT_HOURS: Final = WorkingHours(frozenset(range(5)), time(9), time(17), ZoneInfo("UTC"))


@dataclass(frozen=True, slots=True)
class Availability:
    """One person's busy times and working hours over the window asked."""

    address: str
    """The person's mailbox."""
    busy: tuple[tuple[datetime, datetime], ...]
    """Busy intervals (aware datetimes, start inclusive, end exclusive)."""
    hours: WorkingHours
    """The person's working hours."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A time everyone asked is free and at work."""

    start: datetime
    """Start, in the requester's zone."""
    end: datetime
    """End, in the requester's zone."""
    edge: int
    """People for whom the slot touches the first or last hour of their working day."""


def _parse_time(text: str) -> time:
    return time.fromisoformat(text.split(".")[0])


def _graph_moment(value: dict[str, Any], default_tz: ZoneInfo) -> datetime:
    """A Graph ``dateTimeTimeZone`` as an aware datetime."""
    raw = str(value["dateTime"]).split(".")[0].rstrip("Z")
    tz = zone(value["timeZone"]) if value.get("timeZone") else default_tz
    return datetime.fromisoformat(raw).replace(tzinfo=tz)


def working_hours(doc: dict[str, Any] | None, fallback_zone: str = "UTC") -> WorkingHours:
    """Graph ``workingHours`` (from ``getSchedule`` or ``mailboxSettings``) as ``WorkingHours``."""
    if not doc:
        return WorkingHours(
            DEFAULT_HOURS.days, DEFAULT_HOURS.start, DEFAULT_HOURS.end, zone(fallback_zone)
        )
    tz_doc = doc.get("timeZone") or {}
    tz = zone(str(tz_doc.get("name") or fallback_zone))
    days = frozenset(DAYS.index(d.lower()) for d in doc.get("daysOfWeek", DAYS[:5]))
    return WorkingHours(days, _parse_time(doc["startTime"]), _parse_time(doc["endTime"]), tz)


def availability_from_graph(item: dict[str, Any], answer_zone: str) -> Availability:
    """One ``scheduleInformation`` item as an ``Availability``.

    Args:
        item: The item (``scheduleId``, ``scheduleItems``, ``workingHours``).
        answer_zone: The zone asked for with ``Prefer: outlook.timezone`` (item times are in it).
    """
    if "error" in item:
        message = item["error"].get("message", "no free/busy")
        raise SlotError(f"no free/busy for {item.get('scheduleId')}: {message}")
    tz = zone(answer_zone)
    busy = tuple(
        (_graph_moment(entry["start"], tz), _graph_moment(entry["end"], tz))
        for entry in item.get("scheduleItems", [])
        if str(entry.get("status", "busy")).lower() in BUSY_STATUSES
    )
    return Availability(str(item["scheduleId"]), busy, working_hours(item.get("workingHours")))


def _at_work(hours: WorkingHours, start: datetime, end: datetime) -> tuple[bool, bool]:
    """(inside the working day, touches its first or last hour)."""
    local_start, local_end = start.astimezone(hours.tz), end.astimezone(hours.tz)
    last = local_end - timedelta(microseconds=1)
    if local_start.date() != last.date() or local_start.weekday() not in hours.days:
        return False, False
    day_start = datetime.combine(local_start.date(), hours.start, hours.tz)
    day_end = datetime.combine(local_start.date(), hours.end, hours.tz)
    inside = day_start <= local_start and local_end <= day_end
    edge = local_start < day_start + timedelta(hours=1) or local_end > day_end - timedelta(hours=1)
    return inside, edge


def free_slots(
    people: Sequence[Availability],
    start: datetime,
    end: datetime,
    duration: timedelta,
    requester_tz: ZoneInfo,
    *,
    step: timedelta = timedelta(minutes=30),
    limit: int = 5,
    not_before: datetime | None = None,
) -> list[Slot]:
    """The best ``limit`` slots of ``duration`` in [start, end) when all ``people`` are free.

    Candidates start every ``step`` on the requester's clock; a slot must lie inside every
    person's working day (in their zone) and overlap none of their busy times. Ranked by how
    many people it puts at the edge of their day, then earliest first; shown in the
    requester's zone.

    Args:
        people: Each attendee's availability (the organizer included).
        start: Start of the window (aware).
        end: End of the window (aware).
        duration: Meeting length.
        requester_tz: The zone the slots are shown in.
        step: Spacing of candidate starts.
        limit: Most slots returned.
        not_before: No slot starts before this (now, usually).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise SlotError("the window must be timezone-aware")
    if duration <= timedelta(0) or end - start < duration:
        raise SlotError("the window is shorter than the meeting")
    earliest = max(start, not_before) if not_before is not None else start
    local = earliest.astimezone(requester_tz)
    minutes = int(step.total_seconds() // 60)
    midnight = datetime.combine(local.date(), time(0), requester_tz)
    offset = (local - midnight).total_seconds() / 60
    aligned = midnight + timedelta(minutes=-(-offset // minutes) * minutes)
    candidate = aligned.astimezone(ZoneInfo("UTC"))
    found: list[Slot] = []
    while candidate + duration <= end:
        finish = candidate + duration
        edges = 0
        ok = True
        for person in people:
            inside, edge = _at_work(person.hours, candidate, finish)
            if not inside or any(b0 < finish and candidate < b1 for b0, b1 in person.busy):
                ok = False
                break
            edges += edge
        if ok:
            found.append(
                Slot(candidate.astimezone(requester_tz), finish.astimezone(requester_tz), edges)
            )
        candidate += step
    found.sort(key=lambda s: (s.edge, s.start))
    return found[:limit]
