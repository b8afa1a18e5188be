"""Slack's Web API and Socket Mode on loopback, for tests and benchmarks: records, answers.

Socket Mode as Slack runs it: ``apps.connections.open`` (with the app-level token) answers a
WebSocket URL; the server greets with ``hello``, pushes envelopes (``events_api``,
``interactive``, ``slash_commands``) and expects each to be acknowledged with its
``envelope_id``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

TEAM = "T0001"
BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-1-test"


@dataclass
class FakeSlack:
    """Records every Web API call; ``failures`` scripts HTTP errors for the next calls."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """(status, headers) answered, oldest first, instead of success; e.g. 429 + Retry-After."""
    refused: list[tuple[str, int]] = field(default_factory=list)
    """The calls answered with a scripted failure: (method, status)."""
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    """Open Socket Mode connections."""
    acks: list[dict[str, Any]] = field(default_factory=list)
    """What the app answered to each envelope (``envelope_id`` and any ``payload``)."""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a Socket Mode client has connected and been greeted."""

    def of(self, method: str) -> list[dict[str, Any]]:
        """The bodies of the successful calls of one method, in order."""
        return [body for name, body in self.calls if name == method]

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.text()
        if request.content_type == "application/json":
            body = json.loads(raw or "{}")
        else:
            body = dict(urllib.parse.parse_qsl(raw))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if method == "apps.connections.open":
            if token != APP_TOKEN:
                return web.json_response({"ok": False, "error": "invalid_auth"})
            link = self.url.replace("http://", "ws://").removesuffix("/api/") + "/link"
            return web.json_response({"ok": True, "url": link})
        if token != BOT_TOKEN:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.failures:
            status, headers = self.failures.pop(0)
            self.refused.append((method, status))
            error = "ratelimited" if status == 429 else "internal_error"
            return web.json_response({"ok": False, "error": error}, status=status, headers=headers)
        self.calls.append((method, body))
        if method == "auth.test":
            return web.json_response(
                {"ok": True, "user_id": "UBOT0001", "bot_id": "BBOT0001", "team_id": TEAM}
            )
        ts = f"{1700000000 + len(self.calls)}.000100"
        return web.json_response({"ok": True, "channel": body.get("channel"), "ts": ts})

    async def link(self, request: web.Request) -> web.WebSocketResponse:
        """The Socket Mode WebSocket: greet, then record every acknowledgement."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0001"}}
        )
        self.sockets.append(ws)
        self.connected.set()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
        self.sockets.remove(ws)
        return ws

    async def push(self, kind: str, payload: dict[str, Any], *, retry_attempt: int = 0) -> str:
        """Send an envelope over the first open socket; its ``envelope_id``."""
        envelope_id = uuid.uuid4().hex
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self.sockets[0].send_json(envelope)
        return envelope_id


@asynccontextmanager
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A running ``FakeSlack`` whose ``url`` is the Web API base (``…/api/``)."""
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post("/api/{method}", fake.handle)
    app.router.add_get("/link", fake.link)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.url = str(server.make_url("/api/"))
    try:
        yield fake
    finally:
        for ws in list(fake.sockets):
            await ws.close()
        await server.close()
