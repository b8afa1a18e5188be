"""Entra tokens for Graph: secret or certificate, the tenant's authority, the app-only cache,
on-behalf-of per signed-in user, and ``findMeetingTimes`` with the delegated token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.demo_tls import make_client_certificate
from tests.tools.graph_support import CLIENT_ID, SECRET, TENANT, FakeGraph, fake_graph
from tests.tools.graph_support import working_hours_doc as hours
from tools.graph import GraphAuthError, GraphClient
from tools.graph_auth import REFRESH_MARGIN, ClientCertificate

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[FakeGraph]:
    async with fake_graph(tmp_path / "fake") as fake:
        fake.hours["ana@contoso.com"] = hours("W. Europe Standard Time")
        fake.hours["li@contoso.com"] = hours("Eastern Standard Time")
        yield fake


async def test_the_app_token_is_fetched_once_and_reused(graph: FakeGraph) -> None:
    async with graph.client() as client:
        settings = await client.mailbox_settings("ana@contoso.com")
        await client.mailbox_settings("li@contoso.com")
        await client.get_schedule(
            "ana@contoso.com",
            ["li@contoso.com"],
            datetime(2030, 1, 8, tzinfo=BERLIN),
            datetime(2030, 1, 9, tzinfo=BERLIN),
        )
    assert settings["timeZone"] == "W. Europe Standard Time"
    assert graph.entra.grants == {"client_credentials": 1}
    assert graph.entra.client_auth == {"secret": 1}


async def test_a_certificate_signs_the_client_assertion(graph: FakeGraph, tmp_path: Path) -> None:
    async with graph.client(certificate=True) as client:
        await client.mailbox_settings("ana@contoso.com")
        await client.mailbox_settings("li@contoso.com")
    assert graph.entra.client_auth == {"certificate": 1}
    assert graph.entra.grants == {"client_credentials": 1}

    # A certificate the app registration does not hold is refused.
    make_client_certificate(tmp_path / "other.pem", CLIENT_ID)
    other = ClientCertificate.load(tmp_path / "other.pem")
    assert "PRIVATE KEY" not in repr(other)
    stranger = GraphClient(
        TENANT,
        CLIENT_ID,
        other,
        authority_host=graph.base,
        base_url=f"{graph.base}/v1.0",
        ca_file=graph.ca_file,
    )
    async with stranger:
        with pytest.raises(GraphAuthError, match="invalid_client"):
            await stranger.mailbox_settings("ana@contoso.com")


async def test_a_wrong_secret_or_tenant_gets_no_token(graph: FakeGraph) -> None:
    for tenant, secret, code in (
        (TENANT, "wrong", "invalid_client"),
        ("other-tenant", SECRET, "invalid_tenant"),
    ):
        client = GraphClient(
            tenant,
            CLIENT_ID,
            secret,
            authority_host=graph.base,
            base_url=f"{graph.base}/v1.0",
            ca_file=graph.ca_file,
        )
        assert client.authority == f"{graph.base}/{tenant}"
        async with client:
            with pytest.raises(GraphAuthError) as caught:
                await client.mailbox_settings("ana@contoso.com")
        assert caught.value.code == code
    assert graph.entra.token_requests == 0


async def test_on_behalf_of_keeps_one_token_per_user(graph: FakeGraph) -> None:
    now = [1000.0]
    async with graph.client() as client:
        client.tokens.clock = lambda: now[0]
        assert not client.signed_in("ana")
        with pytest.raises(GraphAuthError) as caught:
            await client.find_meeting_times(
                "ana", "ana@contoso.com", ["li@contoso.com"], *_window(), timedelta(minutes=30)
            )
        assert caught.value.code == "not_signed_in"

        await client.sign_in("ana", graph.entra.user_assertion("ana@contoso.com"))
        await client.sign_in("li", graph.entra.user_assertion("li@contoso.com"))
        assert graph.entra.grants["on_behalf_of"] == 2
        for _ in range(3):
            await client.find_meeting_times(
                "ana", "ana@contoso.com", ["li@contoso.com"], *_window(), timedelta(minutes=30)
            )
        assert graph.entra.grants["on_behalf_of"] == 2  # from the per-user cache

        # Shortly before expiry the user's token is exchanged again from the same assertion.
        now[0] += 3600 - REFRESH_MARGIN + 1
        await client.find_meeting_times(
            "ana", "ana@contoso.com", ["li@contoso.com"], *_window(), timedelta(minutes=30)
        )
        assert graph.entra.grants["on_behalf_of"] == 3
        assert graph.entra.grants["client_credentials"] == 0

        with pytest.raises(GraphAuthError) as caught:
            await client.sign_in("omar", "not-a-token")
        assert caught.value.code == "invalid_grant" and not client.signed_in("omar")


async def test_find_meeting_times_suggests_common_working_times(graph: FakeGraph) -> None:
    start, end = _window()
    graph.add_busy("li@contoso.com", start.replace(hour=15), start.replace(hour=15, minute=30))
    async with graph.client() as client:
        await client.sign_in("ana", graph.entra.user_assertion("ana@contoso.com"))
        found = await client.find_meeting_times(
            "ana",
            "ana@contoso.com",
            ["li@contoso.com"],
            start,
            end,
            timedelta(minutes=30),
            timezone="Europe/Berlin",
            max_candidates=10,
        )
    slots = [s["meetingTimeSlot"]["start"] for s in found["meetingTimeSuggestions"]]
    # Berlin 09-17 and New York 09-17 overlap 15:00-17:00 Berlin; li is busy 15:00-15:30.
    assert [s["dateTime"][11:16] for s in slots] == ["15:30", "16:00", "16:30"]
    assert {s["timeZone"] for s in slots} == {"Europe/Berlin"}
    assert found["emptySuggestionsReason"] == ""


def _window() -> tuple[datetime, datetime]:
    start = datetime(2030, 1, 8, tzinfo=BERLIN)  # a Tuesday
    return start, start + timedelta(days=1)
