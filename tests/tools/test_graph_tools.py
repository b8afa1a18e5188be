"""The calendar tools through the real executor and store, against the fake Graph."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sessions.store import SessionStore
from tests.tools.builtin_support import RecordingGuard
from tests.tools.graph_support import FakeGraph, fake_graph, working_hours_doc
from tools.builtin import graph_tools
from tools.builtin.meetings import parse_day
from tools.controlplane import ControlPlaneClient
from tools.executor import ToolCall, ToolExecutor
from tools.graph import GraphClient
from tools.registry import Registry, ToolContext

BERLIN = ZoneInfo("Europe/Berlin")


def next_weekday(weekday: int) -> date:
    today = datetime.now(BERLIN).date()
    return today + timedelta(days=(weekday - today.weekday()) % 7 or 7)


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[FakeGraph]:
    async with fake_graph(tmp_path) as fake:
        fake.hours["ana@contoso.com"] = working_hours_doc("W. Europe Standard Time")
        fake.hours["li@contoso.com"] = working_hours_doc("Eastern Standard Time")
        yield fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    opened = await SessionStore.open(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    yield opened
    await opened.close()


@pytest.fixture
async def client(graph: FakeGraph) -> AsyncIterator[GraphClient]:
    async with graph.client(domain="contoso.com", allowed_domains=["contoso.com"]) as opened:
        yield opened


@pytest.fixture
async def ctx(store: SessionStore, client: GraphClient) -> AsyncIterator[ToolContext]:
    conversation = (await store.admit("cli", "e1", "cli:ana", "ana", "hi")).conversation_id
    async with ControlPlaneClient("http://127.0.0.1:9", "unused") as cp:
        yield ToolContext(
            "ana", "ana", "cli", conversation, "req-1", cp, RecordingGuard(), graph=client
        )


def executor(store: SessionStore) -> ToolExecutor:
    return ToolExecutor(Registry(graph_tools()), store, timeout=20)


async def test_proposed_slots_respect_both_working_days(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    tuesday = next_weekday(1)
    busy_from = datetime.combine(tuesday, datetime.min.time(), BERLIN).replace(hour=15)
    graph.add_busy("li@contoso.com", busy_from, busy_from + timedelta(minutes=30))
    arguments = {"attendees": ["li"], "day": tuesday.isoformat(), "days": 1, "count": 10}
    (outcome,) = await executor(store).run(ctx, [ToolCall("1", "propose_slots", arguments)])
    assert outcome.status == "ok", outcome.text
    starts = [datetime.fromisoformat(s["start"]) for s in outcome.data["slots"]]
    # Berlin 09-17 and New York 09-17 overlap 15:00-17:00 Berlin; li is busy 15:00-15:30.
    assert sorted(s.time().isoformat() for s in starts) == ["15:30:00", "16:00:00", "16:30:00"]
    assert outcome.data["time_zone"] == "Europe/Berlin"
    assert graph.schedule_calls == [["ana@contoso.com", "li@contoso.com"]]


async def test_availability_lists_busy_times(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    graph.add_busy(
        "li@contoso.com",
        datetime(2030, 1, 8, 10, tzinfo=BERLIN),
        datetime(2030, 1, 8, 11, tzinfo=BERLIN),
    )
    arguments = {"attendees": ["li", "ana@contoso.com"], "day": "2030-01-08"}
    (outcome,) = await executor(store).run(ctx, [ToolCall("1", "find_availability", arguments)])
    assert outcome.status == "ok", outcome.text
    li = outcome.data["people"][0]
    assert li["time_zone"] == "America/New_York"
    assert li["busy"] == [["2030-01-08T10:00:00+01:00", "2030-01-08T11:00:00+01:00"]]
    assert "Tue 08 Jan 2030 10:00-11:00 CET" in outcome.text


async def test_a_booking_runs_once_even_when_executed_again(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    run = executor(store)
    start = datetime.combine(next_weekday(1), datetime.min.time()).replace(hour=16)
    arguments = {"attendees": ["li", "ana"], "subject": "CAB review", "start": start.isoformat()}
    (proposed,) = await run.run(ctx, [ToolCall("1", "book_meeting", arguments)])
    assert proposed.status == "confirmation_required", proposed.text
    assert graph.booked == {}
    confirmation = proposed.confirmation
    assert confirmation is not None
    assert confirmation.arguments["organizer"] == "ana@contoso.com"
    assert confirmation.arguments["attendees"] == ["li@contoso.com"]
    assert confirmation.arguments["start"] == start.replace(tzinfo=BERLIN).isoformat()
    assert confirmation.arguments["online"] is True
    decided = await run.decide("ana", confirmation.id, "confirm")
    assert decided.confirmation is not None
    first = await run.execute(ctx, decided.confirmation)
    assert first.status == "ok", first.text
    # A resumed execution (the gateway restarted before recording the result) runs again.
    again = await run.execute(ctx, dataclasses.replace(decided.confirmation, state="executing"))
    assert again.status == "ok", again.text
    assert graph.event_posts == 2 and len(graph.booked) == 1
    assert first.data["event_id"] == again.data["event_id"]
    (event,) = graph.booked.values()
    assert event["subject"] == "CAB review" and event["isOnlineMeeting"] is True
    assert event["start"] == {"dateTime": start.isoformat(), "timeZone": "Europe/Berlin"}
    assert event["attendees"] == [
        {"emailAddress": {"address": "li@contoso.com"}, "type": "required"}
    ]
    listed = await run.run(ctx, [ToolCall("2", "list_cab_meetings", {"days": 14})])
    assert listed[0].status == "ok", listed[0].text
    assert [m["subject"] for m in listed[0].data["meetings"]] == ["CAB review"]


async def test_a_booking_outside_the_allowed_domains_is_refused(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    arguments = {
        "attendees": ["li", "mallory@evil.example"],
        "subject": "CAB review",
        "start": "2030-01-08T16:00",
    }
    (outcome,) = await executor(store).run(ctx, [ToolCall("1", "book_meeting", arguments)])
    assert outcome.status == "error"
    assert "mallory@evil.example is outside the allowed domains (contoso.com)" in outcome.text
    assert graph.booked == {} and graph.schedule_calls == []


async def test_no_graph_means_a_clear_refusal(store: SessionStore, ctx: ToolContext) -> None:
    bare = dataclasses.replace(ctx, graph=None)
    (outcome,) = await executor(store).run(bare, [ToolCall("1", "list_cab_meetings", {})])
    assert outcome.status == "error" and "not configured" in outcome.text


def test_days_are_read_like_people_say_them() -> None:
    monday = date(2026, 6, 15)
    assert parse_day("next tuesday", monday) == date(2026, 6, 16)
    assert parse_day("monday", monday) == date(2026, 6, 22)
    assert parse_day("tomorrow", monday) == date(2026, 6, 16)
    assert parse_day(None, monday) == monday
    assert parse_day("2026-07-01", monday) == date(2026, 7, 1)


async def test_a_booking_by_day_takes_the_best_common_slot(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    tuesday = next_weekday(1)
    arguments = {"attendees": ["ana", "li"], "subject": "CAB review", "day": tuesday.isoformat()}
    (proposed,) = await executor(store).run(ctx, [ToolCall("1", "book_meeting", arguments)])
    assert proposed.status == "confirmation_required", proposed.text
    assert proposed.confirmation is not None
    start = datetime.fromisoformat(proposed.confirmation.arguments["start"])
    # Berlin and New York overlap 15:00-17:00 Berlin, all of it at the edge of someone's day
    # (li's first hour or ana's last), so the earliest slot wins.
    assert start == datetime.combine(tuesday, datetime.min.time(), BERLIN).replace(hour=15)
    assert proposed.confirmation.arguments["subject"] == "CAB review"


async def test_slots_follow_each_zone_in_the_weeks_between_daylight_saving_changes(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    # New York moved to summer time on 2030-03-10, Berlin only on 2030-03-31: for three weeks
    # the two are five hours apart, not six, so ana's and li's days overlap from 14:00 Berlin.
    results = {}
    for day in ("2030-03-05", "2030-03-12"):  # Tuesdays before and after New York's change
        arguments = {"attendees": ["li"], "day": day, "days": 1, "duration_minutes": 60, "count": 9}
        (outcome,) = await executor(store).run(ctx, [ToolCall("1", "propose_slots", arguments)])
        assert outcome.status == "ok", outcome.text
        results[day] = sorted(s["start"][11:16] for s in outcome.data["slots"])
    assert results["2030-03-05"] == ["15:00", "15:30", "16:00"]
    assert results["2030-03-12"] == ["14:00", "14:30", "15:00", "15:30", "16:00"]


async def test_more_than_twenty_attendees_are_asked_in_chunks(
    store: SessionStore, ctx: ToolContext, graph: FakeGraph
) -> None:
    people = [f"user{i}" for i in range(24)]
    arguments = {"attendees": people, "day": "2030-01-08", "days": 1}
    (outcome,) = await executor(store).run(ctx, [ToolCall("1", "propose_slots", arguments)])
    assert outcome.status == "ok", outcome.text
    assert sorted(len(c) for c in graph.schedule_calls) == [5, 20]  # ana and 24 others
    # Everyone else works 09-17 UTC: from 10:00 Berlin, best outside anyone's first hour.
    assert outcome.data["slots"][0]["start"] == "2030-01-08T11:00:00+01:00"
