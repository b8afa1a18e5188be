"""The Graph client against a fake Entra and Graph on loopback HTTPS: tokens, chunks, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.tools.graph_support import FakeGraph, fake_graph, working_hours_doc
from tools.graph import (
    MAX_IN_FLIGHT,
    GraphAuthError,
    GraphInvalidError,
    GraphThrottledError,
)

START = datetime(2026, 6, 16, 8, tzinfo=UTC)
END = START + timedelta(hours=9)


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[FakeGraph]:
    async with fake_graph(tmp_path) as fake:
        yield fake


async def test_the_token_is_fetched_once_and_reused(graph: FakeGraph) -> None:
    graph.hours["ana@contoso.com"] = working_hours_doc("W. Europe Standard Time")
    async with graph.client() as client:
        settings = await client.mailbox_settings("ana@contoso.com")
        await client.mailbox_settings("li@contoso.com")
        items = await client.get_schedule(
            "ana@contoso.com", ["ana@contoso.com"], START, END, timezone="Europe/Berlin"
        )
    assert settings["timeZone"] == "W. Europe Standard Time"
    assert items[0]["scheduleId"] == "ana@contoso.com"
    assert graph.token_requests == 1


async def test_more_than_twenty_schedules_are_asked_in_chunks(graph: FakeGraph) -> None:
    people = [f"user{i}@contoso.com" for i in range(45)]
    async with graph.client() as client:
        items = await client.get_schedule("ana@contoso.com", people, START, END)
    assert sorted(len(chunk) for chunk in graph.schedule_calls) == [5, 20, 20]
    assert [item["scheduleId"] for item in items] == people


async def test_a_429_is_retried_after_retry_after(graph: FakeGraph) -> None:
    graph.throttle = ["0.05", "0"]
    async with graph.client() as client:
        await client.mailbox_settings("ana@contoso.com")
    assert graph.throttled == 2

    graph.throttle = ["0"] * 5
    async with graph.client(retries=2) as client:
        with pytest.raises(GraphThrottledError) as caught:
            await client.mailbox_settings("ana@contoso.com")
    assert caught.value.status == 429 and caught.value.code == "TooManyRequests"
    assert graph.throttle == ["0", "0"]


async def test_a_repeated_transaction_id_books_once(graph: FakeGraph) -> None:
    event = {
        "subject": "CAB review",
        "start": {"dateTime": "2026-06-16T15:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-06-16T15:30:00", "timeZone": "UTC"},
    }
    async with graph.client() as client:
        first = await client.create_event("ana@contoso.com", event, "tx-1")
        second = await client.create_event("ana@contoso.com", event, "tx-1")
    assert first["id"] == second["id"]
    assert len(graph.events) == 1 and graph.event_posts == 2


async def test_errors_are_typed(graph: FakeGraph, tmp_path: Path) -> None:
    async with graph.client() as client:
        with pytest.raises(GraphInvalidError, match="not a mailbox"):
            await client.mailbox_settings("../../admin")
        with pytest.raises(GraphInvalidError, match="timezone-aware"):
            await client.get_schedule(
                "ana@contoso.com", ["x@contoso.com"], START.replace(tzinfo=None), END
            )
    bad = graph.client()
    bad._secret = type(bad._secret)("wrong")
    async with bad:
        with pytest.raises(GraphAuthError, match="invalid_client"):
            await bad.mailbox_settings("ana@contoso.com")


async def test_one_mailbox_has_at_most_four_requests_in_flight(graph: FakeGraph) -> None:
    async with graph.client() as client:
        lane = client._lanes("ana@contoso.com")
        assert client._lanes("ANA@contoso.com") is lane
        await asyncio.gather(*(client.mailbox_settings("ana@contoso.com") for _ in range(10)))
    assert graph.most_in_flight == MAX_IN_FLIGHT
