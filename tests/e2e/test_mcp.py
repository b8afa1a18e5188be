"""MCP end to end: the SDK's own client over streamable HTTP and stdio, per principal."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import orjson
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from gateway.mcp_serve import mcp_http
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, prepare, running_gateway
from tests.e2e.test_cli_confirmations import cp_rollout

REPO = str(Path(__file__).resolve().parents[2])


def mcp_token(gw: GatewayUnderTest | Path, principal: str) -> str:
    base = gw if isinstance(gw, Path) else gw.data_dir
    return (base / "mcp-tokens" / principal).read_text().strip()


@pytest.fixture
async def mcp_url(gw: GatewayUnderTest) -> AsyncIterator[str]:
    """The MCP endpoint of the test gateway, served with uvicorn on loopback."""
    async with mcp_http(gw.gateway) as url:
        yield url


@contextlib.asynccontextmanager
async def connect(url: str, token: str) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP with ``Authorization: Bearer <token>``."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def audit(gw: GatewayUnderTest) -> list[dict[str, Any]]:
    return [orjson.loads(line) async for line in gw.gateway.store.export_audit()]


def structured(result: CallToolResult) -> dict[str, Any]:
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def test_tools_are_listed_per_principal_with_truthful_annotations(
    gw: GatewayUnderTest, mcp_url: str
) -> None:
    async with connect(mcp_url, mcp_token(gw, "ana")) as ana:
        tools = {t.name: t for t in (await ana.list_tools()).tools}
    assert {"promote_rollout", "pending_approvals", "rollback_rollout"} <= set(tools)
    promote = tools["promote_rollout"].annotations
    assert promote is not None
    assert (promote.read_only_hint, promote.destructive_hint) == (False, False)
    rollback = tools["rollback_rollout"].annotations
    assert rollback is not None and rollback.destructive_hint is True
    pending = tools["pending_approvals"].annotations
    assert pending is not None and pending.read_only_hint is True
    assert "untrusted" in (tools["pending_approvals"].description or "")
    assert "confirm" in (tools["promote_rollout"].description or "")

    async with connect(mcp_url, mcp_token(gw, "vera")) as vera:
        seen = (await vera.list_tools()).tools
    assert seen, "a viewer still reads"
    assert "promote_rollout" not in {t.name for t in seen}
    assert all(t.annotations and t.annotations.read_only_hint for t in seen)


async def test_a_read_only_tool_answers_with_structured_untrusted_content(
    gw: GatewayUnderTest, mcp_url: str
) -> None:
    async with connect(mcp_url, mcp_token(gw, "ana")) as ana:
        result = await ana.call_tool("pending_approvals", {})
    assert not result.is_error, result
    body = structured(result)
    assert body["status"] == "ok" and body["untrusted"] is True
    assert "zoom" in json.dumps(body["data"])
    (text,) = result.content
    assert text.type == "text" and "untrusted" in text.text and "zoom" in text.text
    records = [r for r in await audit(gw) if r["type"] == "tool.called"]
    assert records[-1]["channel"] == "mcp"
    assert records[-1]["principal_id"] == "ana"


async def test_a_change_is_only_proposed_and_runs_once_confirmed_elsewhere(
    gw: GatewayUnderTest, mcp_url: str, demo_cp: DemoControlPlane
) -> None:
    async with connect(mcp_url, mcp_token(gw, "ana")) as ana:
        result = await ana.call_tool("promote_rollout", {"app": "google-chrome"})
    assert not result.is_error, result
    body = structured(result)
    assert body["status"] == "confirmation_required"
    confirmation = body["confirmation"]
    assert confirmation["state"] == "pending" and confirmation["tool"] == "promote_rollout"
    assert f"goodbot confirm {confirmation['id']}" in body["how_to_confirm"]
    assert confirmation["id"] in result.content[0].text  # type: ignore[union-attr]
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1  # nothing changed

    status, decided = await gw.decide("ana", confirmation["id"])
    assert status == 200, decided
    assert decided["outcome"] == "confirmed" and decided["result"]["status"] == "ok"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2

    records = await audit(gw)
    called = [r for r in records if r["type"] == "tool.called"]
    assert called[-1]["channel"] == "mcp"
    assert called[-1]["data"]["confirmation_id"] == confirmation["id"]
    created = [r for r in records if r["type"].startswith("confirmation.")]
    assert created[0]["channel"] == "mcp"


async def test_a_viewer_cannot_call_a_mutating_tool(
    gw: GatewayUnderTest, mcp_url: str, demo_cp: DemoControlPlane
) -> None:
    async with connect(mcp_url, mcp_token(gw, "vera")) as vera:
        result = await vera.call_tool("promote_rollout", {"app": "google-chrome"})
    assert result.is_error
    assert structured(result)["status"] == "denied"
    denied = [r for r in await audit(gw) if r["type"] == "tool.denied"]
    assert denied[-1]["channel"] == "mcp" and denied[-1]["principal_id"] == "vera"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


@pytest.mark.parametrize("token", [None, "not-a-token", "cli"])
async def test_without_a_valid_mcp_token_nothing_runs(
    gw: GatewayUnderTest, mcp_url: str, token: str | None
) -> None:
    before = len(await audit(gw))
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        # A CLI token is not an MCP token: each channel's identities are its own.
        bearer = gw.token("ana") if token == "cli" else token
        headers["Authorization"] = f"Bearer {bearer}"
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "pending_approvals", "arguments": {}},
    }
    async with aiohttp.ClientSession() as http, http.post(mcp_url, json=call, headers=headers) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    if token is None:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's client surfaces the 401
            async with connect(mcp_url, "") as client:
                await client.list_tools()
    assert len(await audit(gw)) == before  # nothing audited, nothing stored


async def test_stdio_serves_the_local_user(demo_cp: DemoControlPlane, tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    policy = prepare(data_dir)
    env = {
        **os.environ,
        "GOODBOT_CONTROLPLANE__URL": demo_cp.url,
        "GOODBOT_CONTROLPLANE__TOKEN": demo_cp.gateway_token,
        "GOODBOT_POLICY_FILE": str(policy),
    }
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway.cli", "mcp", "--stdio", "--data-dir", str(data_dir), "--as", "vera"],
        env=env,
        cwd=REPO,
    )
    async with Client(server) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "rollout_status" in names and "promote_rollout" not in names  # vera: a viewer
        result = await client.call_tool("rollout_status", {"app": "google-chrome"})
    assert not result.is_error, result
    assert structured(result)["status"] == "ok"
    assert "google-chrome" in json.dumps(structured(result)["data"])


async def test_stdio_proposes_and_the_change_runs_once_confirmed_elsewhere(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    """The local user (ana) over stdio: a change is only proposed; confirming it through the
    CLI channel of a gateway on the same data directory runs it, once."""
    data_dir = tmp_path / "gw"
    policy = prepare(data_dir)
    env = {
        **os.environ,
        "GOODBOT_CONTROLPLANE__URL": demo_cp.url,
        "GOODBOT_CONTROLPLANE__TOKEN": demo_cp.gateway_token,
        "GOODBOT_POLICY_FILE": str(policy),
    }
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway.cli", "mcp", "--stdio", "--data-dir", str(data_dir)],
        env=env,
        cwd=REPO,
    )
    async with Client(server) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "promote_rollout" in names  # ana: an operator
        result = await client.call_tool("promote_rollout", {"app": "google-chrome"})
    proposed = structured(result)
    assert proposed["status"] == "confirmation_required", proposed
    confirmation_id = proposed["confirmation"]["id"]
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1
    async with running_gateway(data_dir, demo_cp.url, demo_cp.gateway_token) as gw:
        status, body = await gw.decide("ana", confirmation_id)
        assert status == 200 and body["result"]["status"] == "ok", body
        again, _ = await gw.decide("ana", confirmation_id)
        assert again == 409
        records = await audit(gw)
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    created = [r for r in records if r["type"] == "confirmation.created"]
    assert [r["channel"] for r in created] == ["mcp"]
