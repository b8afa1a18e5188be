"""Forged identity on Slack, beyond ``tests/e2e/test_slack.py`` (forged, stale, tampered):
future timestamps, missing or foreign signatures, a tampered button, replayed deliveries and
clicks, another workspace's user and display-name claims. All refused or inert, nothing
processed twice, refusals audited."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.signature import SignatureVerifier

from gateway.settings import SlackSettings
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_cli_confirmations import cp_rollout
from tests.e2e.test_slack import (
    ANA,
    SAM,
    SECRET,
    click,
    command,
    deliver,
    event,
    gw,
    slack_api,
    slack_policy,
    until,
)
from tests.fakes.slack_api import FakeSlack
from tests.security.conftest import audit_kinds, stored_messages

__all__ = ["gw", "slack_api"]  # the Slack gateway fixtures, used here by name


@pytest.fixture
async def reader(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, slack_api: FakeSlack
) -> AsyncIterator[GatewayUnderTest]:
    """A Slack gateway over the session's shared control plane, for tests that change
    nothing there (cheaper than a private copy)."""
    data = tmp_path / "gw"
    slack_policy(data)
    slack = SlackSettings.model_validate(
        {"signing_secret": SECRET, "bot_token": "xoxb-test", "api_base_url": slack_api.url}
    )
    async with running_gateway(
        data, shared_demo_cp.url, shared_demo_cp.gateway_token, slack=slack
    ) as handle:
        yield handle


async def post(gw: GatewayUnderTest, body: str, headers: dict[str, str]) -> int:
    sent = {"Content-Type": "application/json", **headers}
    async with gw.http.post(f"{gw.url}/slack/events", data=body, headers=sent) as response:
        await response.read()
        return response.status


def signed(body: str, ts: int, secret: str = SECRET) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": signature}


@pytest.mark.parametrize(
    "headers",
    [
        lambda body: signed(body, int(time.time()) + 6 * 60),  # from the future
        lambda body: {"X-Slack-Request-Timestamp": str(int(time.time()))},  # no signature
        lambda body: {
            **signed(body, int(time.time())),
            "X-Slack-Signature": "v1=" + signed(body, int(time.time()))["X-Slack-Signature"][3:],
        },
        lambda body: {**signed(body, int(time.time())), "X-Slack-Request-Timestamp": "soon"},
        lambda body: {},
    ],
    ids=["future", "unsigned", "other-version", "bad-timestamp", "no-headers"],
)
async def test_unverifiable_deliveries_are_refused_and_audited(
    reader: GatewayUnderTest, slack_api: FakeSlack, headers: Any
) -> None:
    gw = reader
    body = event("promote google-chrome to pilot")
    assert await post(gw, body, headers(body)) == 401
    await asyncio.sleep(0.2)
    assert slack_api.calls == []
    assert await stored_messages(gw) == 0
    assert (await audit_kinds(gw)).count("auth.refused") == 1


async def test_a_tampered_button_is_refused_and_a_replayed_click_runs_nothing_twice(
    gw: GatewayUnderTest, slack_api: FakeSlack, demo_cp: DemoControlPlane
) -> None:
    assert await deliver(gw, event("promote google-chrome to pilot")) == 200
    (posted,) = await until(lambda: slack_api.of("chat.postMessage"))
    message = {"channel": "D0000ANA", "ts": "1700000002.000100", "blocks": posted["blocks"]}
    # sam's click, rewritten after signing to claim ana: the signature no longer matches.
    forged = await deliver(gw, click(message, SAM), form=True, tamper=lambda b: b.replace(SAM, ANA))
    assert forged == 401
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1
    # ana's own click, delivered twice byte for byte (a replay inside the five minutes).
    body = click(message, ANA)
    headers = {
        **signed(body, int(time.time())),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    for _ in range(2):
        async with gw.http.post(f"{gw.url}/slack/events", data=body, headers=headers) as r:
            assert r.status == 200
    await until(lambda: slack_api.of("chat.update"))
    await until(lambda: slack_api.of("chat.postEphemeral"))
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    executed = [k for k in await audit_kinds(gw) if k == "confirmation.executed"]
    assert len(executed) == 1


async def test_a_replayed_slash_command_is_processed_once(
    reader: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    gw = reader
    body = command("what is pending my approval?")
    headers = {
        **signed(body, int(time.time())),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    for _ in range(2):
        async with gw.http.post(f"{gw.url}/slack/events", data=body, headers=headers) as r:
            assert r.status == 200
    await until(lambda: slack_api.of("chat.postMessage"))
    await asyncio.sleep(0.5)
    assert len(slack_api.of("chat.postMessage")) == 1
    assert await stored_messages(gw) == 2


async def test_another_workspace_and_display_names_do_not_make_a_principal(
    reader: GatewayUnderTest, slack_api: FakeSlack
) -> None:
    gw = reader
    other_team = json.loads(event("promote google-chrome to pilot", event_id="EvOther"))
    other_team["team_id"] = "T0THER"
    other_team["event"]["team"] = "T0THER"  # ana's user id, in another workspace
    assert await deliver(gw, json.dumps(other_team)) == 200
    claimed = json.loads(event("promote google-chrome to pilot", user="UMALLORY", event_id="EvX"))
    claimed["event"] |= {"username": "ana", "user_profile": {"name": "ana", "real_name": "Ana"}}
    assert await deliver(gw, json.dumps(claimed)) == 200
    posted = await until(lambda: slack_api.of("chat.postMessage")[1:])
    assert all("not a known principal" in p["text"] for p in slack_api.of("chat.postMessage"))
    assert len(posted) == 1
    assert await stored_messages(gw) == 0
    assert (await audit_kinds(gw)).count("message.refused") == 2
