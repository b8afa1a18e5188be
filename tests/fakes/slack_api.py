"""Slack's Web API on loopback for tests and benchmarks: records calls, answers like Slack."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

TEAM = "T0001"
BOT_TOKEN = "xoxb-test"


@dataclass
class FakeSlack:
    """Records every Web API call; ``failures`` scripts HTTP errors for the next calls."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """(status, headers) answered, oldest first, instead of success; e.g. 429 + Retry-After."""
    refused: list[tuple[str, int]] = field(default_factory=list)
    """The calls answered with a scripted failure: (method, status)."""

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
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
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


@asynccontextmanager
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A running ``FakeSlack`` whose ``url`` is the Web API base (``…/api/``)."""
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post("/api/{method}", fake.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.url = str(server.make_url("/api/"))
    try:
        yield fake
    finally:
        await server.close()
