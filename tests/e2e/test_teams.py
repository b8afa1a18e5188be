"""Teams end to end: signed activities in from a local Bot Connector emulator, replies, card
updates and notifications out to its serviceUrl, a real gateway and demo control plane between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import text

from agent.route import Reply, RouteResult, StepRequest
from gateway.bootstrap import demo_policy
from gateway.settings import TeamsSettings
from sessions.notifications import NewNotification
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_cli_confirmations import cp_rollout
from tests.fakes.bot_connector import (
    ANA_OID,
    APP_ID,
    OTHER_TENANT,
    SAM_OID,
    SECRET,
    STRANGER_OID,
    TENANT,
    BotConnector,
    bot_connector,
    jwks_seam,
    new_key,
    until,
)


def teams_policy(data_dir: Path) -> None:
    """The demo policy with Teams open and Teams identities for ana and sam."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = demo_policy(data_dir)
    document = yaml.safe_load(path.read_text())
    document["channels"]["teams"] = {}
    for name, oid in (("ana", ANA_OID), ("sam", SAM_OID)):
        document["principals"][name]["identities"].append(
            {"channel": "teams", "id": f"{TENANT}:{oid}"}
        )
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def teams_settings(connector: BotConnector) -> TeamsSettings:
    return TeamsSettings.model_validate(
        {
            "app_id": APP_ID,
            "tenant_id": TENANT,
            "client_secret": SECRET,
            "authority_host": connector.idp_url,
            "ca_file": str(connector.ca_file),
        }
    )


@pytest.fixture
async def connector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BotConnector]:
    async with bot_connector(tmp_path / "connector") as fake:
        jwks_seam(monkeypatch, fake.keys_url)
        yield fake


@contextlib.asynccontextmanager
async def teams_gateway(
    cp: DemoControlPlane, data: Path, connector: BotConnector, **overrides: Any
) -> AsyncIterator[GatewayUnderTest]:
    teams_policy(data)
    async with running_gateway(
        data, cp.url, cp.gateway_token, teams=teams_settings(connector), **overrides
    ) as handle:
        yield handle


@pytest.fixture
async def gw(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, connector: BotConnector
) -> AsyncIterator[GatewayUnderTest]:
    """A Teams gateway over the session's read-only demo control plane (nothing confirmed)."""
    async with teams_gateway(shared_demo_cp, tmp_path / "gw", connector) as handle:
        yield handle


@pytest.fixture
async def gw_private(
    demo_cp: DemoControlPlane, tmp_path: Path, connector: BotConnector
) -> AsyncIterator[GatewayUnderTest]:
    """A Teams gateway over a private demo control plane, for tests that change it."""
    async with teams_gateway(demo_cp, tmp_path / "gw", connector) as handle:
        yield handle


async def count(gw: GatewayUnderTest, table: str) -> int:
    async with gw.gateway.store.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())  # noqa: S608


async def audit(gw: GatewayUnderTest) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in gw.gateway.store.export_audit()]


async def test_a_personal_message_is_acknowledged_then_answered(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    started = time.perf_counter()
    status, _ = await connector.post(
        gw.http, gw.url, connector.message("what is pending my approval?")
    )
    assert status == 202
    assert time.perf_counter() - started < 2.0
    (reply,) = await until(connector.texts)
    assert "zoom" in reply and "crowdstrike-falcon" in reply
    (sent,) = connector.sent()
    assert sent["conversation"]["id"] == "a:personal-ana"
    assert sent["textFormat"] == "markdown"
    assert "|" not in reply  # Teams messages render no tables: rows become a list
    # Outbound tokens came from the emulator's token endpoint (msal caches them).
    assert all((r.authorization or "").startswith("Bearer bf-") for r in connector.received)
    assert connector.tokens_issued == 1
    saved = await gw.gateway.store.directory.reference("teams", f"{TENANT}:a:personal-ana")
    assert saved is not None and saved["serviceUrl"] == connector.service_url
    mine = await gw.gateway.store.directory.reference("teams", f"personal:{TENANT}:{ANA_OID}")
    assert mine == saved


async def test_group_chats_answer_only_mentions_with_the_mention_stripped(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    group = "19:group@thread.v2"
    status, _ = await connector.post(
        gw.http,
        gw.url,
        connector.message("what is pending my approval?", conversation=group, kind="groupChat"),
    )
    assert status == 202
    await asyncio.sleep(0.3)
    assert connector.received == [] and await count(gw, "messages") == 0
    status, _ = await connector.post(
        gw.http,
        gw.url,
        connector.message(
            "what is pending my approval?", conversation=group, kind="groupChat", mention=True
        ),
    )
    assert status == 202
    (reply,) = await until(connector.texts)
    assert "zoom" in reply
    async with gw.gateway.store.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT text FROM messages ORDER BY id"))).scalars().all()
    assert stored[0] == "what is pending my approval?"


async def test_a_channel_thread_reply_goes_to_its_thread(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    thread = "19:ops@thread.tacv2;messageid=1700000000001"
    message = connector.message(
        "what is pending my approval?", conversation=thread, kind="channel", mention=True
    )
    assert (await connector.post(gw.http, gw.url, message))[0] == 202
    await until(connector.texts)
    (posted,) = [r for r in connector.received if r.method == "POST"]
    assert posted.path.endswith(f"/activities/{message['id']}")  # a reply to the message
    assert posted.body["conversation"]["id"] == thread


async def test_a_repeated_activity_is_processed_once(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    message = connector.message("what is pending my approval?", activity_id="retry-1")
    assert (await connector.post(gw.http, gw.url, message))[0] == 202
    await until(connector.texts)
    assert (await connector.post(gw.http, gw.url, message))[0] == 202
    await asyncio.sleep(0.4)
    assert len(connector.texts()) == 1
    assert await count(gw, "messages") == 2  # the message and its reply, once


async def test_a_slow_turn_shows_typing(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, connector: BotConnector
) -> None:
    class Slow:
        name = "slow"
        uses_history = False

        async def next_step(self, request: StepRequest) -> RouteResult:
            await asyncio.sleep(1.5)  # longer than the typing indicator's first delay
            return RouteResult(Reply("thought about it"))

        async def close(self) -> None:
            return None

    async with teams_gateway(shared_demo_cp, tmp_path / "gw", connector, route=Slow()) as gw:
        assert (await connector.post(gw.http, gw.url, connector.message("hm?")))[0] == 202
        await until(connector.texts)
        kinds = [r.body.get("type") for r in connector.received]
        assert kinds.index("typing") < kinds.index("message")


async def test_429_and_transient_errors_are_retried_and_others_are_not(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    connector.failures = [(429, {"Retry-After": "0"}), (503, {})]
    assert (await connector.post(gw.http, gw.url, connector.message("hello")))[0] == 202
    await until(lambda: len(connector.received) >= 3)
    await asyncio.sleep(0.3)
    assert [r.method for r in connector.received] == ["POST"] * 3
    connector.received.clear()
    connector.failures = [(400, {})]
    assert (await connector.post(gw.http, gw.url, connector.message("hello again")))[0] == 202
    await until(lambda: connector.received)
    await asyncio.sleep(0.5)
    assert len(connector.received) == 1  # a 400 is final


async def test_an_unknown_sender_is_told_and_nothing_is_stored(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    message = connector.message("what is pending my approval?", user=STRANGER_OID)
    assert (await connector.post(gw.http, gw.url, message))[0] == 202
    (reply,) = await until(connector.texts)
    assert "not a known principal" in reply
    assert await count(gw, "messages") == 0
    refused = [r for r in await audit(gw) if r["type"] == "message.refused"]
    assert len(refused) == 1


def _forgeries(connector: BotConnector) -> dict[str, str | None]:
    other = new_key()
    return {
        "no token": None,
        "bad signature": connector.sign(key=other),
        "alg none": connector.sign(algorithm="none"),
        "HS256": connector.sign(algorithm="HS256", key=b"k" * 32),
        "wrong audience": connector.sign(claims={"aud": "another-bot"}),
        "audience list": connector.sign(claims={"aud": [APP_ID]}),
        "wrong issuer": connector.sign(claims={"iss": "https://evil.example"}),
        "expired": connector.sign(age=3600 + 301),
        "no key id": connector.sign(headers={"kid": None}),
        "unknown key id": connector.sign(headers={"kid": "other"}),
        "not a jwt": "a.b.c",
        "service url mismatch": connector.sign(claims={"serviceurl": "https://evil.example/"}),
        "no service url": connector.sign(drop=("serviceurl",)),
    }


FORGERIES = [
    "no token",
    "bad signature",
    "alg none",
    "HS256",
    "wrong audience",
    "audience list",
    "wrong issuer",
    "expired",
    "no key id",
    "unknown key id",
    "not a jwt",
    "service url mismatch",
    "no service url",
]


@pytest.mark.parametrize("forgery", FORGERIES)
async def test_forged_requests_get_401_and_reach_nothing(
    gw: GatewayUnderTest, connector: BotConnector, forgery: str
) -> None:
    token = _forgeries(connector)[forgery]
    message = connector.message("what is pending my approval?", activity_id="forged-1")
    status, body = await connector.post(gw.http, gw.url, message, token=token)
    assert status == 401, (forgery, body)
    await asyncio.sleep(0.3)
    assert connector.received == []
    assert await count(gw, "messages") == 0
    assert await count(gw, "processed_events") == 0
    records = await audit(gw)
    assert [r["type"] for r in records] == ["auth.refused"]
    assert records[0]["channel"] == "teams" and records[0]["principal_id"] is None
    assert "what is pending" not in json.dumps(records)
    # Audited once per source and window, however often it is tried.
    await connector.post(gw.http, gw.url, message, token=token)
    assert len(await audit(gw)) == 1


async def test_a_tenant_not_on_the_allowlist_gets_403(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    message = connector.message("what is pending my approval?", tenant=OTHER_TENANT)
    status, _ = await connector.post(gw.http, gw.url, message)
    assert status == 403
    await asyncio.sleep(0.3)
    assert connector.received == [] and await count(gw, "messages") == 0
    (record,) = await audit(gw)
    assert record["type"] == "message.refused"
    assert record["data"]["rule"] == "teams.tenant_not_allowed"
    assert record["data"]["event_id"] == message["id"]
    assert record["principal_id"] is None


async def test_an_activity_for_another_service_url_is_refused(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    message = connector.message("hello", service_url="http://127.0.0.1:9/elsewhere/")
    status, _ = await connector.post(gw.http, gw.url, message)
    assert status == 401
    assert await count(gw, "messages") == 0


async def _propose(gw: GatewayUnderTest, connector: BotConnector) -> tuple[dict[str, Any], str]:
    status, _ = await connector.post(
        gw.http, gw.url, connector.message("promote google-chrome to pilot")
    )
    assert status == 202
    (card,) = await until(connector.cards)
    posted = next(r for r in connector.received if r.method == "POST" and r.body.get("attachments"))
    assert posted.body["attachments"][0]["content"] == card
    # The id the connector gave the card message, which Teams sends back as replyToId.
    return card, f"msg-card-{len(connector.received)}"


async def test_promote_card_refuses_others_executes_once_and_updates(
    gw_private: GatewayUnderTest, connector: BotConnector, demo_cp: DemoControlPlane
) -> None:
    gw = gw_private
    card, card_id = await _propose(gw, connector)
    assert card["version"] == "1.5"
    facts = {f["title"]: json.loads(f["value"]) for f in card["body"][2]["facts"]}
    assert facts["from_ring"] == 1 and facts["to_ring"] == 2
    verbs = [(a["type"], a["verb"]) for a in card["actions"]]
    assert verbs == [("Action.Execute", "goodbot.confirm"), ("Action.Execute", "goodbot.deny")]

    click = connector.invoke(card, "goodbot.confirm", card_id=card_id, user=SAM_OID, name="Sam")
    status, body = await connector.post(gw.http, gw.url, click)
    assert status == 200
    assert body["type"] == "application/vnd.microsoft.activity.message"
    assert "Only Ana Lima can confirm" in body["value"]
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1
    assert connector.updates() == []

    click = connector.invoke(card, "goodbot.confirm", card_id=card_id)
    status, body = await connector.post(gw.http, gw.url, click)
    assert status == 200
    assert body["statusCode"] == 200
    assert body["type"] == "application/vnd.microsoft.card.adaptive"
    final = body["value"]
    assert "actions" not in final
    assert any("Confirmed by Ana Lima and done" in b.get("text", "") for b in final["body"])
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    (update,) = await until(connector.updates)
    assert update.path.endswith(f"/activities/{card_id}")
    assert update.body["attachments"][0]["content"] == final

    status, body = await connector.post(gw.http, gw.url, click)
    assert status == 200
    texts = [b.get("text", "") for b in body["value"]["body"]]
    assert any("Nothing changed" in t for t in texts)
    await asyncio.sleep(0.3)
    assert len(connector.updates()) == 1
    executions = [r for r in await audit(gw) if r["type"] == "confirmation.executed"]
    assert len(executions) == 1


async def test_deny_updates_the_card_and_changes_nothing(
    gw: GatewayUnderTest, connector: BotConnector, shared_demo_cp: DemoControlPlane
) -> None:
    card, card_id = await _propose(gw, connector)
    status, body = await connector.post(
        gw.http, gw.url, connector.invoke(card, "goodbot.deny", card_id=card_id)
    )
    assert status == 200
    assert any("Denied by Ana Lima" in b.get("text", "") for b in body["value"]["body"])
    await until(connector.updates)
    assert cp_rollout(shared_demo_cp, "google-chrome")["ring"] == 1


async def test_a_card_from_another_conversation_changes_nothing(
    gw: GatewayUnderTest, connector: BotConnector, shared_demo_cp: DemoControlPlane
) -> None:
    card, card_id = await _propose(gw, connector)
    elsewhere = connector.invoke(
        card,
        "goodbot.confirm",
        card_id=card_id,
        conversation="19:other@thread.v2",
        kind="groupChat",
    )
    status, body = await connector.post(gw.http, gw.url, elsewhere)
    assert status == 200
    assert "another conversation" in body["value"]
    assert cp_rollout(shared_demo_cp, "google-chrome")["ring"] == 1


async def test_an_expired_card_shows_expired(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, connector: BotConnector
) -> None:
    async with teams_gateway(
        shared_demo_cp, tmp_path / "gw", connector, confirmation_ttl_seconds=1
    ) as gw:
        card, card_id = await _propose(gw, connector)
        await asyncio.sleep(1.2)
        status, body = await connector.post(
            gw.http, gw.url, connector.invoke(card, "goodbot.confirm", card_id=card_id)
        )
        assert status == 200
        assert any("Expired" in b.get("text", "") for b in body["value"]["body"])
        await until(connector.updates)
    assert cp_rollout(shared_demo_cp, "google-chrome")["ring"] == 1


async def test_notifications_go_to_the_personal_chat_as_cards(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    gateway = gw.gateway
    assert gateway.delivery is not None and "teams" in gateway.delivery.channels
    note = NewNotification(
        "ana",
        "teams",
        "approval.requested",
        "CAB approval apr_1 is waiting for you: zoom 6.0 to pilot.",
        "approval:apr_1",
        {"approval_id": "apr_1"},
    )
    await gateway.store.notifications.enqueue([note])
    assert await gateway.delivery.run() == 0  # ana never wrote to goodbot: nowhere to post yet
    assert connector.received == []

    assert (await connector.post(gw.http, gw.url, connector.message("hello")))[0] == 202
    await until(connector.texts)
    connector.received.clear()
    later = datetime.now(UTC) + timedelta(minutes=30)  # past the failed row's back-off
    assert await gateway.delivery.run(now=later) == 1
    (card,) = cards = connector.cards()
    assert "CAB approval apr_1" in json.dumps(card)
    assert cards[0]["actions"][0]["verb"] == "goodbot.ask"
    assert {b["conversation"]["id"] for b in connector.sent()} == {"a:personal-ana"}


async def test_deliver_raises_when_the_connector_refuses(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    teams = gw.gateway.teams
    item = {"id": "ntf_1", "topic": "rollout.paused", "text": "Rollout paused.", "data": {}}
    with pytest.raises(LookupError):
        await teams.deliver("ana", [f"{TENANT}:{ANA_OID}"], [item])
    assert (await connector.post(gw.http, gw.url, connector.message("hello")))[0] == 202
    await until(connector.texts)
    connector.failures = [(403, {})]
    with pytest.raises(aiohttp.ClientResponseError):
        await teams.deliver("ana", [f"{TENANT}:{ANA_OID}"], [item])


async def test_teams_is_not_served_without_an_app_id(
    shared_demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    cp = shared_demo_cp
    async with running_gateway(tmp_path / "gw", cp.url, cp.gateway_token) as plain:
        status, _ = await plain.get("/api/messages")
        assert status == 404


async def test_a_notification_card_action_asks_goodbot_as_the_clicker(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    assert (await connector.post(gw.http, gw.url, connector.message("hello")))[0] == 202
    await until(connector.texts)
    connector.received.clear()
    item = {
        "id": "ntf_1",
        "topic": "approval.requested",
        "text": "CAB approval apr_1 is waiting for you.",
        "data": {"approval_id": "apr_1"},
    }
    await gw.gateway.teams.deliver("ana", [f"{TENANT}:{ANA_OID}"], [item])
    (card,) = connector.cards()
    connector.received.clear()
    click = connector.invoke(card, "goodbot.ask", card_id="msg-1")
    status, body = await connector.post(gw.http, gw.url, click)
    assert status == 200 and "On it" in body["value"]
    (reply,) = await until(connector.texts)
    assert "zoom" in reply  # ana's /pending: the CAB approvals waiting for her
    assert await count(gw, "messages") == 4  # "hello", the click as ana's turn, two replies
