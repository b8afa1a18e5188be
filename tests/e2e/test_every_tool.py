"""Every tool through both routes, end to end: CLI HTTP → policy → route → tool → control plane.

The ``rules`` route hears plain English; the ``openai`` route talks to a local
OpenAI-compatible server that scripts the model's tool calls. Changes are confirmed over the
CLI channel and must then be visible in the control plane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.openai_route import OpenAIRoute
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, Turn, running_gateway
from tests.fakes.openai_server import FakeOpenAI, garbage, text, tool_calls


def pending_approval(cp: DemoControlPlane, app: str) -> str:
    """The id of the CAB approval waiting for ana about ``app``."""
    body = requests.get(
        f"{cp.url}/api/v1/approvals/pending",
        headers={"Authorization": f"Bearer {cp.tokens['ana']}"},
        timeout=10,
    ).json()
    (found,) = [i["id"] for i in body["items"] if f" {app} " in i["summary"]]
    return str(found)


def rollout_of(cp: DemoControlPlane, app: str, version_prefix: str) -> dict[str, Any]:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {cp.tokens['ana']}"
    (found,) = http.get(f"{cp.url}/api/v1/apps", params={"name": app}, timeout=10).json()["items"]
    versions = http.get(f"{cp.url}/api/v1/apps/{found['id']}/versions", timeout=10).json()
    (version,) = [v["id"] for v in versions["items"] if v["version"].startswith(version_prefix)]
    rollouts = http.get(
        f"{cp.url}/api/v1/rollouts", params={"app_id": found["id"]}, timeout=10
    ).json()["items"]
    (rollout,) = [r for r in rollouts if r["version_id"] == version]
    return dict(rollout)


# (plain English for the rules route, the same request as the model's tool call, status)
READS: list[tuple[str, str, dict[str, Any]]] = [
    ("what is pending my approval?", "pending_approvals", {}),
    ("why is mac-00001 non-compliant?", "device_compliance", {"device": "mac-00001"}),
    ("show drift for the web team", "scope_drift", {"scope": "web team"}),
    ("status of the chrome rollout", "rollout_status", {"app": "chrome"}),
    ("why is zoom risky?", "explain_risk", {"app": "zoom"}),
    ("recent events for mac-00001", "recent_events", {"device": "mac-00001"}),
]


def changes(zoom_approval: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (
            f"approve {zoom_approval}",
            "decide_approval",
            {"approval_id": zoom_approval, "decision": "approve"},
        ),
        ("promote google-chrome to pilot", "promote_rollout", {"app": "google-chrome"}),
        ("pause google-chrome", "pause_rollout", {"app": "google-chrome"}),
        ("resume google-chrome", "resume_rollout", {"app": "google-chrome"}),
        ("roll back firefox 132", "rollback_rollout", {"app": "firefox", "version": "132"}),
    ]


@pytest.fixture(params=["rules", "openai"])
async def routed(
    request: pytest.FixtureRequest, demo_cp: DemoControlPlane, tmp_path: Path
) -> AsyncIterator[tuple[GatewayUnderTest, FakeOpenAI | None]]:
    if request.param == "rules":
        async with running_gateway(tmp_path / "gw", demo_cp.url, demo_cp.gateway_token) as gw:
            yield gw, None
        return
    async with FakeOpenAI() as fake:
        route = OpenAIRoute(base_url=fake.base_url, model="fake-model", api_key="sk-test-key")
        async with running_gateway(
            tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, route=route
        ) as gw:
            yield gw, fake


async def ask(
    gw: GatewayUnderTest, fake: FakeOpenAI | None, said: str, tool: str, args: dict[str, Any]
) -> Turn:
    if fake is not None:
        fake.script(tool_calls([(tool, args)]), text(f"Here is what {tool} said."))
    turn = await gw.turn("ana", said)
    assert turn.status == 200, turn.error
    calls = turn.result["tool_calls"]
    assert [c["name"] for c in calls] == [tool], turn.result
    if fake is not None:
        # The model saw the tool's output as data in the next request.
        last = fake.requests[-1]["messages"][-1]
        assert last["role"] == "tool" and calls[0]["status"] in last["content"]
    return turn


async def test_every_tool(
    routed: tuple[GatewayUnderTest, FakeOpenAI | None], demo_cp: DemoControlPlane
) -> None:
    gw, fake = routed
    for said, tool, args in READS:
        turn = await ask(gw, fake, said, tool, args)
        assert turn.result["tool_calls"][0]["status"] == "ok", turn.result
    zoom = pending_approval(demo_cp, "zoom")
    for said, tool, args in changes(zoom):
        turn = await ask(gw, fake, said, tool, args)
        call = turn.result["tool_calls"][0]
        assert call["status"] == "confirmation_required", call
        confirmation = turn.confirmation
        status, body = await gw.decide(
            "ana", confirmation["id"], "confirm", confirmation["arguments_hash"]
        )
        assert status == 200 and body["result"]["status"] == "ok", (tool, body)
    # What the control plane shows afterwards.
    chrome = rollout_of(demo_cp, "google-chrome", "131")
    assert chrome["ring"] == 2 and chrome["status"] != "Paused", chrome
    assert "pause" in [h["action"] for h in chrome["history"]]
    assert rollout_of(demo_cp, "firefox", "132")["intent_state"] in ("rolled_back", "rolling_back")
    with pytest.raises(ValueError, match="not enough values"):
        pending_approval(demo_cp, "zoom")


async def test_a_secret_never_reaches_the_model_server(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    secret = "sk-proj-" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4"
    async with FakeOpenAI() as fake:
        route = OpenAIRoute(base_url=fake.base_url, model="fake-model", api_key="sk-test-key")
        async with running_gateway(
            tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, route=route
        ) as gw:
            fake.script(text("I will not need that key."))
            await gw.turn("ana", f"here is our openai key {secret}, keep it safe")
            fake.script(text("Noted."))
            await gw.turn("ana", "what did I just tell you?")  # history goes to the model
    sent = repr(fake.requests)
    assert secret not in sent
    assert "[REDACTED:api_key]" in sent


async def test_model_garbage_and_malformed_arguments_execute_nothing(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    async with FakeOpenAI() as fake:
        route = OpenAIRoute(base_url=fake.base_url, model="fake-model", api_key="sk-test-key")
        async with running_gateway(
            tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, route=route
        ) as gw:
            fake.script(garbage(b"<html>502 upstream</html>"))
            turn = await gw.turn("ana", "promote google-chrome to pilot")
            assert turn.result["tool_calls"] == []
            assert "couldn't get an answer" in turn.reply and "Nothing was changed" in turn.reply
            fake.script(
                tool_calls([("promote_rollout", '{"app": "google-chrome",')]),
                tool_calls([("promote_rollout", {"app": "google-chrome", "ring": 9})]),
                tool_calls([("format_disk", {})]),
                text("I could not do it."),
            )
            turn = await gw.turn("ana", "promote google-chrome to pilot")
            statuses = [(c["name"], c["status"]) for c in turn.result["tool_calls"]]
            assert statuses == [
                ("promote_rollout", "error"),
                ("promote_rollout", "error"),
                ("format_disk", "error"),
            ]
            texts = [c["text"] for c in turn.result["tool_calls"]]
            assert "not valid JSON" in texts[0]
            assert "ring: unknown argument" in texts[1]
            assert "no tool named 'format_disk'" in texts[2]
            assert turn.result["confirmation"] is None
            assert await gw.gateway.store.pending_for("ana") == []
