"""Slack end to end: signed deliveries in, Web API calls out to a loopback Slack, a real gateway
and demo control plane in between."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from slack_sdk.signature import SignatureVerifier

from gateway.bootstrap import demo_policy
from gateway.settings import NotificationSettings, SlackSettings
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_cli_confirmations import cp_rollout
from tests.fakes.slack_api import APP_TOKEN, TEAM, FakeSlack, fake_slack

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ANA, SAM = "UANA0001", "USAM0001"


@pytest.fixture
async def slack_api() -> AsyncIterator[FakeSlack]:
    async with fake_slack() as fake:
        yield fake


def slack_policy(data_dir: Path) -> None:
    """The demo policy with Slack open and Slack identities for ana and sam."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = demo_policy(data_dir)
    document = yaml.safe_load(path.read_text())
    document["channels"]["slack"] = {}
    for name, user in (("ana", ANA), ("sam", SAM)):
        document["principals"][name]["identities"].append(
            {"channel": "slack", "id": f"{TEAM}:{user}"}
        )
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture
async def gw(
    demo_cp: DemoControlPlane, tmp_path: Path, slack_api: FakeSlack
) -> AsyncIterator[GatewayUnderTest]:
    data = tmp_path / "gw"
    slack_policy(data)
    slack = SlackSettings.model_validate(
        {"signing_secret": SECRET, "bot_token": "xoxb-test", "api_base_url": slack_api.url}
    )
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, slack=slack) as handle:
        yield handle


async def deliver(
    gw: GatewayUnderTest,
    body: str,
    *,
    form: bool = False,
    secret: str = SECRET,
    age: int = 0,
    tamper: Callable[[str], str] | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """POST a delivery to ``/slack/events`` signed with Slack's v0 algorithm."""
    ts = str(int(time.time()) - age)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    signed = {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
        **(headers or {}),
    }
    sent = tamper(body) if tamper else body
    async with gw.http.post(f"{gw.url}/slack/events", data=sent, headers=signed) as response:
        await response.read()
        return response.status


def event(text: str, *, user: str = ANA, event_id: str = "Ev0001", kind: str = "dm") -> str:
    inner: dict[str, Any] = {"user": user, "text": text, "ts": "1700000001.000200", "team": TEAM}
    if kind == "dm":
        inner |= {"type": "message", "channel_type": "im", "channel": "D0000ANA"}
    else:
        inner |= {"type": "app_mention", "channel": "C0000OPS"}
    return json.dumps(
        {
            "token": "legacy",
            "team_id": TEAM,
            "api_app_id": "A0001",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "event": inner,
        }
    )


def click(message: dict[str, Any], user: str, action_id: str = "goodbot_confirm") -> str:
    (button,) = [
        e
        for b in message["blocks"]
        if b.get("block_id") == "goodbot_actions"
        for e in b["elements"]
        if e["action_id"] == action_id
    ]
    payload = {
        "type": "block_actions",
        "team": {"id": TEAM},
        "user": {"id": user, "team_id": TEAM},
        "api_app_id": "A0001",
        "token": "legacy",
        "trigger_id": "1.2.3",
        "channel": {"id": message["channel"]},
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": message["channel"],
        },
        "message": {"ts": message["ts"], "blocks": message["blocks"]},
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "goodbot_actions",
                "value": button["value"],
            }
        ],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


async def until(predicate: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for Slack calls")


async def messages(gw: GatewayUnderTest) -> int:
    async with gw.gateway.store.engine.connect() as conn:
        from sqlalchemy import text

        return int((await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one())


async def test_a_direct_message_is_answered_with_the_approvals(
    gw: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    assert await deliver(gw, event("what is pending my approval?")) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    assert posted["channel"] == "D0000ANA"
    assert "zoom" in posted["text"] and "crowdstrike-falcon" in posted["text"]


async def test_a_mention_is_answered_in_its_thread(
    gw: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    text = "<@UBOT0001> what is pending my approval?"
    assert await deliver(gw, event(text, kind="mention")) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    assert posted["channel"] == "C0000OPS"
    assert posted["thread_ts"] == "1700000001.000200"
    assert "zoom" in posted["text"]


async def test_a_confirmation_is_decided_only_by_its_principal_and_runs_once(
    gw: GatewayUnderTest, slack_api: FakeSlack, demo_cp: DemoControlPlane
) -> None:
    assert await deliver(gw, event("promote google-chrome to pilot")) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    assert any(b.get("block_id") == "goodbot_actions" for b in posted["blocks"])
    arguments = next(b for b in posted["blocks"] if b.get("block_id") == "goodbot_arguments")
    assert '"to_ring": 2' in arguments["text"]["text"]
    message = {"channel": "D0000ANA", "ts": "1700000002.000100", "blocks": posted["blocks"]}

    assert await deliver(gw, click(message, SAM), form=True) == 200
    (refused,) = await until(lambda: slack_api.of("chat.postEphemeral"))
    assert refused["user"] == SAM and f"Only <@{ANA}>" in refused["text"]
    assert slack_api.of("chat.update") == []
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1

    assert await deliver(gw, click(message, ANA), form=True) == 200
    (updated,) = await until(lambda: slack_api.of("chat.update"))
    assert updated["ts"] == message["ts"] and "Confirmed by" in updated["text"]
    assert not any(b.get("block_id") == "goodbot_actions" for b in updated["blocks"])
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2

    assert await deliver(gw, click(message, ANA), form=True) == 200
    again = await until(lambda: slack_api.of("chat.postEphemeral")[1:])
    assert again[0]["user"] == ANA and "Nothing changed" in again[0]["text"]
    assert len(slack_api.of("chat.update")) == 1
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    executions = [
        line async for line in gw.gateway.store.export_audit() if '"confirmation.executed"' in line
    ]
    assert len(executions) == 1


async def test_a_retried_delivery_is_processed_once(
    gw: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    body = event("what is pending my approval?", event_id="EvRetry")
    assert await deliver(gw, body) == 200
    await until(lambda: slack_api.of("chat.postMessage"))
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert await deliver(gw, body, headers=retry) == 200
    await asyncio.sleep(0.5)
    assert len(slack_api.of("chat.postMessage")) == 1
    assert await messages(gw) == 2  # the message and its reply, once


@pytest.mark.parametrize(
    "forgery",
    [
        {"secret": "not-the-signing-secret"},
        {"age": 6 * 60},
        {"tamper": lambda b: b.replace("pending my approval", "pending my approvals")},
    ],
    ids=["forged", "stale", "tampered"],
)
async def test_unverified_requests_are_refused_with_nothing_stored(
    gw: GatewayUnderTest, slack_api: FakeSlack, forgery: dict[str, Any]
) -> None:
    assert await deliver(gw, event("what is pending my approval?"), **forgery) == 401
    await asyncio.sleep(0.3)
    assert slack_api.calls == []
    assert await messages(gw) == 0
    audit = [line async for line in gw.gateway.store.export_audit() if "Ev0001" in line]
    assert audit == []


async def test_deny_updates_the_message_and_changes_nothing(
    gw: GatewayUnderTest, slack_api: FakeSlack, demo_cp: DemoControlPlane
) -> None:
    assert await deliver(gw, event("promote google-chrome to pilot")) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    message = {"channel": "D0000ANA", "ts": "1700000002.000100", "blocks": posted["blocks"]}
    assert await deliver(gw, click(message, ANA, "goodbot_deny"), form=True) == 200
    (updated,) = await until(lambda: slack_api.of("chat.update"))
    assert "Denied by" in updated["text"]
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_an_unknown_sender_is_told_and_nothing_runs(
    gw: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    assert await deliver(gw, event("what is pending my approval?", user="USTRANGER")) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    assert "not a known principal" in posted["text"]
    assert await messages(gw) == 0


async def test_url_verification_is_answered(gw: GatewayUnderTest) -> None:
    body = json.dumps({"type": "url_verification", "token": "legacy", "challenge": "c-123"})
    ts = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    headers = {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/json",
    }
    async with gw.http.post(f"{gw.url}/slack/events", data=body, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["challenge"] == "c-123"


async def test_slack_is_not_served_without_its_secrets(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    async with running_gateway(tmp_path / "gw", demo_cp.url, demo_cp.gateway_token) as plain:
        status, _ = await plain.get("/slack/events")
        assert status == 404


def command(text: str, user: str = ANA) -> str:
    return urllib.parse.urlencode(
        {
            "token": "legacy",
            "team_id": TEAM,
            "channel_id": "C0000OPS",
            "user_id": user,
            "command": "/goodbot",
            "text": text,
            "trigger_id": f"trigger-{user}",
            "response_url": "http://127.0.0.1:9/unused",
            "api_app_id": "A0001",
        }
    )


async def test_the_slash_command_answers_in_a_direct_message(
    gw: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    assert await deliver(gw, command("what is pending my approval?"), form=True) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    assert posted["channel"] == ANA and "zoom" in posted["text"]


async def test_an_expired_confirmation_is_shown_expired(
    demo_cp: DemoControlPlane, tmp_path: Path, slack_api: FakeSlack
) -> None:
    data = tmp_path / "gw"
    slack_policy(data)
    slack = SlackSettings.model_validate(
        {"signing_secret": SECRET, "bot_token": "xoxb-test", "api_base_url": slack_api.url}
    )
    async with running_gateway(
        data, demo_cp.url, demo_cp.gateway_token, slack=slack, confirmation_ttl_seconds=1
    ) as gw:
        assert await deliver(gw, event("promote google-chrome to pilot")) == 200
        (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
        await asyncio.sleep(1.2)
        message = {"channel": "D0000ANA", "ts": "1700000002.000100", "blocks": posted["blocks"]}
        assert await deliver(gw, click(message, ANA), form=True) == 200
        (updated,) = await until(lambda: slack_api.of("chat.update"))
        assert "Expired" in updated["text"]
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_notifications_arrive_as_direct_messages_despite_throttling(
    demo_cp: DemoControlPlane, tmp_path: Path, slack_api: FakeSlack
) -> None:
    data = tmp_path / "gw"
    slack_policy(data)
    slack = SlackSettings.model_validate(
        {"signing_secret": SECRET, "bot_token": "xoxb-test", "api_base_url": slack_api.url}
    )
    # Slack throttles the first post: the client waits out Retry-After and posts again.
    slack_api.failures.append((429, {"Retry-After": "1"}))
    notifications = NotificationSettings(poll_seconds=0.2, deliver_seconds=0.2)
    async with running_gateway(
        data, demo_cp.url, demo_cp.gateway_token, slack=slack, notifications=notifications
    ) as gw:
        # The demo's zoom and crowdstrike-falcon approvals wait for ana (a CAB approver).
        posted = await until(
            lambda: [p for p in slack_api.of("chat.postMessage") if p["channel"] == ANA]
        )
        text = "\n".join(p["text"] for p in posted)
        assert "zoom" in text and "crowdstrike-falcon" in text and "/approve apr_" in text
        assert slack_api.refused == [("chat.postMessage", 429)]
        # Posted once: the outbox holds them as delivered, a later round sends nothing more.
        await asyncio.sleep(0.6)
        assert [p for p in slack_api.of("chat.postMessage") if p["channel"] == ANA] == posted
        assert await gw.gateway.store.notifications.waiting("ana", "slack") == []
        # sam (a viewer, not a CAB approver) is not told about approvals.
        assert [p for p in slack_api.of("chat.postMessage") if p["channel"] == SAM] == []


async def test_socket_mode_runs_the_same_turns_and_confirmations(
    demo_cp: DemoControlPlane, tmp_path: Path, slack_api: FakeSlack
) -> None:
    data = tmp_path / "gw"
    slack_policy(data)
    # No signing secret: nothing is served over HTTP, everything arrives on the socket.
    slack = SlackSettings.model_validate(
        {
            "bot_token": "xoxb-test",
            "api_base_url": slack_api.url,
            "socket_mode": True,
            "app_token": APP_TOKEN,
        }
    )
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, slack=slack) as gw:
        await asyncio.wait_for(slack_api.connected.wait(), 15)
        assert await deliver(gw, event("what is pending my approval?")) == 404
        body = json.loads(event("promote google-chrome to pilot", event_id="EvSock1"))
        envelope = await slack_api.push("events_api", body)
        await until(lambda: [a for a in slack_api.acks if a["envelope_id"] == envelope])
        # A redelivery of the same event (Slack saw no ack in time) runs nothing more.
        await slack_api.push("events_api", body, retry_attempt=1)
        (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
        assert any(b.get("block_id") == "goodbot_actions" for b in posted["blocks"])
        message = {"channel": "D0000ANA", "ts": "1700000002.000100", "blocks": posted["blocks"]}
        action = json.loads(urllib.parse.parse_qs(click(message, ANA))["payload"][0])
        await slack_api.push("interactive", action)
        (updated,) = await until(lambda: slack_api.of("chat.update"))
        assert "Confirmed by" in updated["text"]
        assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
        await asyncio.sleep(0.3)
        assert len(slack_api.of("chat.postMessage")) == 1


def test_socket_mode_needs_the_app_token() -> None:
    with pytest.raises(ValueError, match=r"needs slack\.app_token"):
        SlackSettings.model_validate({"bot_token": "xoxb-test", "socket_mode": True})
    settings = SlackSettings.model_validate({"bot_token": "xoxb-test"})
    assert not settings.enabled
