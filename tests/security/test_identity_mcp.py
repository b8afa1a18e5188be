"""Forged identity on MCP, beyond ``tests/e2e/test_mcp.py`` (no token, a wrong one, a CLI
token): a revoked MCP token, and a session opened by one person used with another's token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.mcp_serve import mcp_http
from tests.e2e.harness import GatewayUnderTest
from tests.security.conftest import audit_kinds


@pytest.fixture
async def mcp_url(gw: GatewayUnderTest) -> AsyncIterator[str]:
    async with mcp_http(gw.gateway) as url:
        yield url


def token(gw: GatewayUnderTest, principal: str) -> str:
    return (gw.data_dir / "mcp-tokens" / principal).read_text().strip()


async def rpc(
    http: aiohttp.ClientSession, url: str, bearer: str, body: dict[str, Any], session: str = ""
) -> tuple[int, str, str]:
    headers = {
        "Authorization": f"Bearer {bearer}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if session:
        headers["mcp-session-id"] = session
    async with http.post(url, data=json.dumps(body), headers=headers) as r:
        return r.status, r.headers.get("mcp-session-id", ""), await r.text()


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"},
    },
}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "pending_approvals", "arguments": {}},
}


async def test_a_revoked_mcp_token_is_refused_from_the_reload_on(
    gw: GatewayUnderTest, mcp_url: str
) -> None:
    old = token(gw, "ana")
    async with aiohttp.ClientSession() as http:
        assert (await rpc(http, mcp_url, old, INIT))[0] == 200
        policy_file = gw.data_dir / "policy.yaml"
        document = yaml.safe_load(policy_file.read_text())
        ana = document["principals"]["ana"]
        ana["identities"] = [i for i in ana["identities"] if i["channel"] != "mcp"]
        policy_file.write_text(yaml.safe_dump(document, sort_keys=False))
        assert gw.gateway.policy.reload_if_changed()
        before = await audit_kinds(gw)
        assert (await rpc(http, mcp_url, old, INIT))[0] == 401
        assert (await rpc(http, mcp_url, old, CALL))[0] == 401
    assert "tool.called" not in (await audit_kinds(gw))[len(before) :]


async def test_a_session_is_not_borrowed_with_another_persons_token(
    gw: GatewayUnderTest, mcp_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        status, session, _ = await rpc(http, mcp_url, token(gw, "ana"), INIT)
        assert status == 200 and session
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await rpc(http, mcp_url, token(gw, "ana"), initialized, session)
        # vera (a viewer) presents ana's session id with her own token.
        status, _, body = await rpc(http, mcp_url, token(gw, "vera"), CALL, session)
        assert status in (400, 403, 404) or '"isError":true' in body.replace(" ", ""), body
    called = [k for k in await audit_kinds(gw) if k in ("tool.called", "tool.denied")]
    assert "tool.called" not in called  # vera ran nothing as ana
