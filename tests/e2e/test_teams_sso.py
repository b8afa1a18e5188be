"""Teams single sign-on end to end: the token-exchange invoke and the sign-in code exchanged on
the person's behalf (msal on-behalf-of against the demo Entra), the sign-in card as fallback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import GraphSettings, TeamsSettings
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_teams import connector, count, teams_policy, teams_settings
from tests.fakes.bot_connector import STRANGER_OID, BotConnector, until
from tests.tools.graph_support import CLIENT_ID, SECRET, TENANT, FakeGraph, fake_graph

__all__ = ["connector"]  # the emulator fixture, used here by name

CONNECTION = "goodbot-sso"
OAUTH_CARD = "application/vnd.microsoft.card.oauth"


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[FakeGraph]:
    async with fake_graph(tmp_path / "graph") as fake:
        yield fake


@pytest.fixture
async def sso(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, connector: BotConnector, graph: FakeGraph
) -> AsyncIterator[GatewayUnderTest]:
    teams = teams_settings(connector).model_dump() | {
        "sso_connection": CONNECTION,
        "token_service_url": connector.service_url,
    }
    graph_settings = GraphSettings(
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        client_secret=SECRET,
        authority_host=graph.base,
        base_url=f"{graph.base}/v1.0",
        ca_file=Path(graph.ca_file),
        domain="contoso.com",
    )
    data = tmp_path / "gw"
    teams_policy(data)
    cp = shared_demo_cp
    async with running_gateway(
        data,
        cp.url,
        cp.gateway_token,
        teams=TeamsSettings.model_validate(teams),
        graph=graph_settings,
    ) as gw:
        yield gw


def ana_token(graph: FakeGraph) -> str:
    """What Teams hands the bot for ana: her token for the bot's exposed API."""
    return graph.entra.user_assertion(
        "ana@contoso.com", audience=f"api://bot.example.com/botid-{CLIENT_ID}"
    )


def oauth_cards(connector: BotConnector) -> list[dict[str, Any]]:
    return [
        a["content"]
        for body in connector.sent()
        for a in body.get("attachments") or []
        if a.get("contentType") == OAUTH_CARD
    ]


def exchange(connector: BotConnector, token: str, exchange_id: str = "ex-1", **who: Any) -> Any:
    value = {"id": exchange_id, "connectionName": CONNECTION, "token": token}
    return connector.sign_in_invoke("signin/tokenExchange", value, **who)


async def test_the_token_exchange_signs_in_once(
    sso: GatewayUnderTest, connector: BotConnector, graph: FakeGraph
) -> None:
    graph_client = sso.gateway.turns.graph
    assert graph_client is not None and not graph_client.signed_in("ana")
    status, body = await connector.post(sso.http, sso.url, exchange(connector, ana_token(graph)))
    assert status == 200
    assert body == {"id": "ex-1", "connectionName": CONNECTION}
    assert graph_client.signed_in("ana")
    assert graph.entra.grants["on_behalf_of"] == 1
    (said,) = await until(connector.texts)
    assert said.startswith("Signed in")
    # Teams sends the same exchange from each of ana's clients: made once.
    status, _ = await connector.post(sso.http, sso.url, exchange(connector, ana_token(graph)))
    assert status == 200
    assert graph.entra.grants["on_behalf_of"] == 1
    assert await count(sso, "messages") == 0  # signing in is no turn


async def test_a_failed_exchange_gets_412_and_the_sign_in_card(
    sso: GatewayUnderTest, connector: BotConnector, graph: FakeGraph
) -> None:
    forged = graph.entra.user_assertion("ana@contoso.com", audience="api://someone-else")
    status, body = await connector.post(sso.http, sso.url, exchange(connector, forged))
    assert status == 412
    assert body["id"] == "ex-1" and body["failureDetail"]
    (card,) = await until(lambda: oauth_cards(connector))
    assert card["connectionName"] == CONNECTION
    assert card["tokenExchangeResource"]["uri"].startswith("api://")
    assert card["buttons"][0]["type"] == "signin" and card["buttons"][0]["value"]
    graph_client = sso.gateway.turns.graph
    assert graph_client is not None and not graph_client.signed_in("ana")


async def test_an_unknown_sender_cannot_sign_in(
    sso: GatewayUnderTest, connector: BotConnector, graph: FakeGraph
) -> None:
    invoke = exchange(connector, ana_token(graph), user=STRANGER_OID)
    status, body = await connector.post(sso.http, sso.url, invoke)
    assert status == 412 and "not a known principal" in body["failureDetail"]
    assert graph.entra.grants["on_behalf_of"] == 0


async def test_signin_sends_the_card_and_a_code_completes_it(
    sso: GatewayUnderTest, connector: BotConnector, graph: FakeGraph
) -> None:
    assert (await connector.post(sso.http, sso.url, connector.message("/signin")))[0] == 202
    (card,) = await until(lambda: oauth_cards(connector))
    assert card["buttons"][0]["value"].startswith(connector.service_url)
    assert await count(sso, "messages") == 0

    connector.magic_codes["314159"] = ana_token(graph)
    verify = connector.sign_in_invoke("signin/verifyState", {"state": "314159"})
    status, _ = await connector.post(sso.http, sso.url, verify)
    assert status == 200
    graph_client = sso.gateway.turns.graph
    assert graph_client is not None and graph_client.signed_in("ana")
    await until(lambda: [t for t in connector.texts() if t.startswith("Signed in")])


async def test_signin_when_the_token_service_holds_a_token(
    sso: GatewayUnderTest, connector: BotConnector, graph: FakeGraph
) -> None:
    message = connector.message("/signin")
    connector.user_tokens[message["from"]["id"]] = ana_token(graph)
    assert (await connector.post(sso.http, sso.url, message))[0] == 202
    await until(lambda: [t for t in connector.texts() if t.startswith("Signed in")])
    assert oauth_cards(connector) == []


async def test_without_graph_there_is_no_single_sign_on(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, connector: BotConnector
) -> None:
    teams = teams_settings(connector).model_dump() | {"sso_connection": CONNECTION}
    data = tmp_path / "gw"
    teams_policy(data)
    cp = shared_demo_cp
    async with contextlib.AsyncExitStack() as stack:
        gw = await stack.enter_async_context(
            running_gateway(
                data, cp.url, cp.gateway_token, teams=TeamsSettings.model_validate(teams)
            )
        )
        status, _ = await connector.post(gw.http, gw.url, exchange(connector, "x"))
        assert status == 400  # an invoke nothing handles
