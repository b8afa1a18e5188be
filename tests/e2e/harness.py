"""End-to-end harness: a real gateway on loopback over a real demo control plane process.

``GatewayUnderTest`` serves the gateway's aiohttp application on 127.0.0.1 with the demo
policy written by ``gateway.bootstrap`` (CLI tokens for ana, li, sam, vera, …) and speaks the
CLI channel's HTTP protocol the way ``goodbot ask`` does: NDJSON events in, JSON out.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from agent.route import Route
from gateway.app import Gateway, build_app, build_gateway, close_gateway
from gateway.bootstrap import demo_policy
from gateway.settings import GatewaySettings, NotificationSettings


@dataclass
class Turn:
    """What one ``POST /cli/v1/turns`` produced."""

    status: int
    events: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Events of one type."""
        return [e for e in self.events if e.get("type") == kind]

    @property
    def result(self) -> dict[str, Any]:
        """The ``done`` event's result."""
        (done,) = self.of("done")
        return dict(done["result"])

    @property
    def reply(self) -> str:
        return str(self.result["reply"])

    @property
    def confirmation(self) -> dict[str, Any]:
        found = self.result["confirmation"]
        assert found is not None, f"no confirmation in {self.result}"
        return dict(found)


@dataclass
class GatewayUnderTest:
    """A running gateway and a client for its CLI channel."""

    gateway: Gateway
    url: str
    data_dir: Path
    http: aiohttp.ClientSession

    def token(self, principal: str) -> str:
        """The CLI token of a demo principal."""
        return (self.data_dir / "cli-tokens" / principal).read_text().strip()

    async def turn(
        self,
        principal: str | None,
        text: str,
        *,
        token: str | None = None,
        conversation: str = "default",
        event_id: str | None = None,
        body: Any = None,
    ) -> Turn:
        headers = {}
        bearer = token if token is not None else (self.token(principal) if principal else None)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        payload = (
            body
            if body is not None
            else {
                "text": text,
                "conversation": conversation,
                "event_id": event_id or uuid.uuid4().hex,
            }
        )
        async with self.http.post(f"{self.url}/cli/v1/turns", json=payload, headers=headers) as r:
            if r.status != 200:
                return Turn(r.status, error=(await r.json())["error"], headers=dict(r.headers))
            events = [json.loads(line) async for line in r.content if line.strip()]
            return Turn(r.status, events, headers=dict(r.headers))

    async def decide(
        self,
        principal: str,
        confirmation_id: str,
        decision: str = "confirm",
        arguments_hash: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"decision": decision}
        if arguments_hash is not None:
            body["arguments_hash"] = arguments_hash
        headers = {"Authorization": f"Bearer {self.token(principal)}"}
        async with self.http.post(
            f"{self.url}/cli/v1/confirmations/{confirmation_id}", json=body, headers=headers
        ) as r:
            return r.status, await r.json()

    async def get(self, path: str, principal: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token(principal)}"} if principal else {}
        async with self.http.get(f"{self.url}{path}", headers=headers) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body


def settings_for(data_dir: Path, **overrides: Any) -> GatewaySettings:
    """Settings for a test gateway: its data in ``data_dir``, notifications off unless asked."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "notifications": NotificationSettings(enabled=False),
    }
    values.update(overrides)
    return GatewaySettings(**values)


def prepare(data_dir: Path) -> Path:
    """The data directory with the demo policy and CLI tokens; the policy file's path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return demo_policy(data_dir)


@contextlib.asynccontextmanager
async def running_gateway(
    data_dir: Path,
    cp_url: str,
    cp_token: str,
    *,
    route: Route | None = None,
    **overrides: Any,
) -> AsyncIterator[GatewayUnderTest]:
    """Serve a gateway on loopback for the duration of the block."""
    settings = settings_for(data_dir, **overrides)
    policy = prepare(data_dir)
    gateway = await build_gateway(
        settings, cp_url=cp_url, cp_token=cp_token, policy_path=policy, route=route
    )
    server = TestServer(build_app(gateway), host="127.0.0.1", port=0)
    try:
        await server.start_server()
        async with aiohttp.ClientSession() as http:
            yield GatewayUnderTest(gateway, str(server.make_url("")).rstrip("/"), data_dir, http)
    finally:
        await server.close()
        await close_gateway(gateway)
