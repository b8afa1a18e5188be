"""The Graph client against Entra and Graph on loopback HTTPS: chunks, retries, limits, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.tools.graph_support import FakeGraph, fake_graph, working_hours_doc
from tools.graph import (
    MAX_IN_FLIGHT,
    GraphInvalidError,
    GraphThrottledError,
    GraphUnavailableError,
)

START = datetime(2026, 6, 16, 8, tzinfo=UTC)
END = START + timedelta(hours=9)
EVENT = {
    "subject": "CAB review",
    "start": {"dateTime": "2026-06-16T15:00:00", "timeZone": "UTC"},
    "end": {"dateTime": "2026-06-16T15:30:00", "timeZone": "UTC"},
}


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[FakeGraph]:
    async with fake_graph(tmp_path) as fake:
        yield fake


async def test_more_than_twenty_schedules_are_asked_in_chunks(graph: FakeGraph) -> None:
    people = [f"user{i}@contoso.com" for i in range(45)]
    async with graph.client() as client:
        items = await client.get_schedule("ana@contoso.com", people, START, END)
    assert sorted(len(chunk) for chunk in graph.schedule_calls) == [5, 20, 20]
    assert [item["scheduleId"] for item in items] == people
    assert all("error" not in item for item in items)


async def test_busy_items_come_in_the_zone_asked(graph: FakeGraph) -> None:
    graph.hours["li@contoso.com"] = working_hours_doc("Eastern Standard Time")
    graph.add_busy("li@contoso.com", START + timedelta(hours=1), START + timedelta(hours=2))
    async with graph.client() as client:
        (li,) = await client.get_schedule(
            "ana@contoso.com", ["li@contoso.com"], START, END, timezone="Europe/Berlin"
        )
    (item,) = li["scheduleItems"]
    assert item["start"] == {"dateTime": "2026-06-16T11:00:00.0000000", "timeZone": "Europe/Berlin"}
    assert li["availabilityView"].startswith("002200")
    assert li["workingHours"]["timeZone"]["name"] == "Eastern Standard Time"


async def test_a_429_is_retried_after_retry_after_and_gives_up_when_bounded(
    graph: FakeGraph,
) -> None:
    graph.knobs.throttle = ["0.05", "0"]
    async with graph.client() as client:
        await client.mailbox_settings("ana@contoso.com")
    assert graph.knobs.failed == 2

    graph.knobs.throttle = ["0"] * 5
    async with graph.client(retries=2) as client:
        with pytest.raises(GraphThrottledError) as caught:
            await client.mailbox_settings("ana@contoso.com")
    assert caught.value.status == 429 and caught.value.code == "TooManyRequests"
    assert caught.value.request_id
    assert graph.knobs.throttle == ["0", "0"]  # three attempts, no more


async def test_a_503_is_retried_after_retry_after_and_gives_up_when_bounded(
    graph: FakeGraph,
) -> None:
    graph.knobs.unavailable = ["0.05"]
    async with graph.client() as client:
        settings = await client.mailbox_settings("ana@contoso.com")
    assert settings["timeZone"] == "UTC" and graph.knobs.failed == 1

    graph.knobs.unavailable = ["0"] * 4
    async with graph.client(retries=1) as client:
        with pytest.raises(GraphUnavailableError) as caught:
            await client.mailbox_settings("ana@contoso.com")
    assert caught.value.status == 503 and caught.value.code == "ServiceUnavailable"
    assert graph.knobs.unavailable == ["0", "0"]


async def test_a_repeated_transaction_id_books_once(graph: FakeGraph) -> None:
    async with graph.client() as client:
        first = await client.create_event("ana@contoso.com", EVENT, "tx-1")
        second = await client.create_event("ana@contoso.com", EVENT, "tx-1")
    assert first["id"] == second["id"]
    assert len(graph.booked) == 1 and graph.event_posts == 2


async def test_a_retry_after_a_timeout_reuses_the_transaction_id(graph: FakeGraph) -> None:
    # Graph creates the event but answers after the attempt's timeout: the retry must not book
    # a second one.
    graph.knobs.slow_posts = [1.5]
    async with graph.client(timeout=5, attempt_timeout=0.5) as client:
        event = await client.create_event("ana@contoso.com", EVENT, "tx-slow")
    assert graph.transaction_ids == ["tx-slow", "tx-slow"]
    (booked,) = graph.booked.values()
    assert event["id"] == booked["id"] and event["transactionId"] == "tx-slow"


async def test_a_call_that_never_answers_in_time_is_unavailable(graph: FakeGraph) -> None:
    graph.knobs.slow_posts = [1.5, 1.5, 1.5]
    async with graph.client(timeout=5, attempt_timeout=0.3, retries=1) as client:
        with pytest.raises(GraphUnavailableError) as caught:
            await client.create_event("ana@contoso.com", EVENT, "tx-lost")
    assert caught.value.code == "timeout"
    assert graph.transaction_ids == ["tx-lost", "tx-lost"] and len(graph.booked) == 1


async def test_errors_are_typed(graph: FakeGraph) -> None:
    async with graph.client() as client:
        with pytest.raises(GraphInvalidError, match="not a mailbox"):
            await client.mailbox_settings("../../admin")
        with pytest.raises(GraphInvalidError, match="timezone-aware"):
            await client.get_schedule(
                "ana@contoso.com", ["x@contoso.com"], START.replace(tzinfo=None), END
            )
        with pytest.raises(GraphInvalidError, match="under 62 days"):
            await client.get_schedule(
                "ana@contoso.com", ["x@contoso.com"], START, START + timedelta(days=62)
            )
        (outside,) = await client.get_schedule("ana@contoso.com", ["x@fabrikam.com"], START, END)
    assert outside["error"]["responseCode"] == "ErrorMailRecipientNotFound"


async def test_one_mailbox_has_at_most_four_requests_in_flight(graph: FakeGraph) -> None:
    graph.latency = 0.05  # keeps each request in flight long enough to overlap
    async with graph.client() as client:
        lane = client._lanes("ana@contoso.com")
        assert client._lanes("ANA@contoso.com") is lane
        await asyncio.gather(*(client.mailbox_settings("ana@contoso.com") for _ in range(10)))
    # The fake answers a fifth concurrent request with 429, as Graph does: none was needed.
    assert graph.most_in_flight == MAX_IN_FLIGHT and graph.throttled == 0
