"""Slot computation: working hours, busy times, zones and a daylight-saving week (pure)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from tools.slots import (
    Availability,
    SlotError,
    WorkingHours,
    availability_from_graph,
    free_slots,
    working_hours,
    zone,
)

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = frozenset(range(5))


def person(
    address: str, tz: ZoneInfo, busy: tuple[tuple[datetime, datetime], ...] = ()
) -> Availability:
    return Availability(address, busy, WorkingHours(WEEKDAYS, time(9), time(17), tz))


def test_slots_lie_inside_everyones_working_hours_across_zones() -> None:
    # Tuesday 2026-06-16: Berlin is UTC+2, New York UTC-4; the overlap is 15:00-17:00 Berlin.
    start = datetime(2026, 6, 16, tzinfo=UTC)
    people = [person("ana@contoso.com", BERLIN), person("li@contoso.com", NEW_YORK)]
    slots = free_slots(
        people, start, start + timedelta(days=1), timedelta(hours=1), BERLIN, limit=20
    )
    assert [s.start.time() for s in sorted(slots, key=lambda s: s.start)] == [
        time(15),
        time(15, 30),
        time(16),
    ]
    assert all(s.start.tzinfo == BERLIN for s in slots)


def test_busy_items_and_weekends_are_skipped_and_ranked_by_edges() -> None:
    start = datetime(2026, 6, 19, tzinfo=BERLIN)  # Friday
    busy = ((datetime(2026, 6, 19, 9, tzinfo=BERLIN), datetime(2026, 6, 19, 16, tzinfo=BERLIN)),)
    people = [person("ana@contoso.com", BERLIN, busy)]
    slots = free_slots(people, start, start + timedelta(days=3), timedelta(minutes=30), BERLIN)
    assert [s.start for s in slots] == [
        datetime(2026, 6, 19, 16, tzinfo=BERLIN),
        datetime(2026, 6, 19, 16, 30, tzinfo=BERLIN),
    ]
    assert all(s.edge == 1 for s in slots)
    ranked = free_slots(
        [person("ana@contoso.com", BERLIN)],
        datetime(2026, 6, 22, tzinfo=BERLIN),
        datetime(2026, 6, 23, tzinfo=BERLIN),
        timedelta(hours=1),
        BERLIN,
        limit=1,
    )
    assert ranked[0].start == datetime(2026, 6, 22, 10, tzinfo=BERLIN) and ranked[0].edge == 0


def test_a_daylight_saving_week_keeps_nine_oclock_local() -> None:
    # Europe springs forward on Sunday 2026-03-29; New York already did on 2026-03-08.
    start = datetime(2026, 3, 26, tzinfo=UTC)
    ana = person("ana@contoso.com", BERLIN)
    slots = free_slots([ana], start, start + timedelta(days=6), timedelta(hours=1), UTC, limit=100)
    first_of_day: dict[date, datetime] = {}
    for slot in sorted(slots, key=lambda s: s.start):
        first_of_day.setdefault(slot.start.date(), slot.start)
    # 09:00 Berlin is 08:00 UTC before the change and 07:00 UTC after it.
    assert first_of_day[date(2026, 3, 27)].time() == time(8)
    assert first_of_day[date(2026, 3, 30)].time() == time(7)
    assert date(2026, 3, 28) not in first_of_day  # Saturday
    both = free_slots(
        [ana, person("li@contoso.com", NEW_YORK)],
        datetime(2026, 3, 27, tzinfo=UTC),
        datetime(2026, 3, 31, tzinfo=UTC),
        timedelta(hours=1),
        NEW_YORK,
        limit=100,
    )
    by_day: dict[date, list[time]] = {}
    for slot in both:
        by_day.setdefault(slot.start.date(), []).append(slot.start.time())
    # Berlin 17:00 is 12:00 New York before the change and 11:00 after it.
    assert max(by_day[date(2026, 3, 27)]) == time(11)
    assert max(by_day[date(2026, 3, 30)]) == time(10)
    assert min(by_day[date(2026, 3, 30)]) == time(9)


def test_graph_answers_are_parsed_with_windows_zones() -> None:
    item = {
        "scheduleId": "li@contoso.com",
        "scheduleItems": [
            {
                "status": "busy",
                "start": {"dateTime": "2026-06-16T10:00:00.0000000", "timeZone": "UTC"},
                "end": {"dateTime": "2026-06-16T11:00:00.0000000", "timeZone": "UTC"},
            },
            {
                "status": "free",
                "start": {"dateTime": "2026-06-16T12:00:00", "timeZone": "UTC"},
                "end": {"dateTime": "2026-06-16T13:00:00", "timeZone": "UTC"},
            },
        ],
        "workingHours": {
            "daysOfWeek": ["monday", "tuesday"],
            "startTime": "08:00:00.0000000",
            "endTime": "16:00:00.0000000",
            "timeZone": {"name": "Pacific Standard Time"},
        },
    }
    parsed = availability_from_graph(item, "UTC")
    assert parsed.busy == (
        (datetime(2026, 6, 16, 10, tzinfo=UTC), datetime(2026, 6, 16, 11, tzinfo=UTC)),
    )
    assert parsed.hours.tz == ZoneInfo("America/Los_Angeles")
    assert parsed.hours.days == frozenset({0, 1})
    assert working_hours(None, "W. Europe Standard Time").tz == BERLIN
    with pytest.raises(SlotError, match="Mars/Olympus"):
        zone("Mars/Olympus")
    with pytest.raises(SlotError, match=r"no free/busy for x@contoso\.com"):
        availability_from_graph(
            {"scheduleId": "x@contoso.com", "error": {"message": "nope"}}, "UTC"
        )
