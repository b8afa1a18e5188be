"""Test helpers: a real control plane server on 127.0.0.1 and a small typed HTTP client."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from controlplane.app import create_app
from controlplane.settings import ControlPlaneSettings
from controlplane.state import STATE, ServiceState


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]

    def ok(self, status: int = 200) -> Any:
        assert self.status == status, f"expected {status}, got {self.status}: {self.body}"
        return self.body


@dataclass
class Client:
    """Speaks to the control plane over real HTTP with a bearer token."""

    http: aiohttp.ClientSession
    base: str
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def as_(self, token: str | None, **headers: str) -> Client:
        return Client(self.http, self.base, token, dict(headers))

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        params: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        hdrs = dict(self.headers)
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        async with self.http.request(
            method, self.base + path, json=json, params=params, data=data, headers=hdrs
        ) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json" and raw:
                body: Any = await resp.json()
            else:
                body = raw.decode()
            return Response(resp.status, body, resp.headers)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, json, **kw)


@dataclass
class ControlPlane:
    """A running control plane and what a test needs to use it."""

    url: str
    state: ServiceState
    settings: ControlPlaneSettings
    client: Client
    bootstrap: str

    async def tenant(self, name: str | None = None) -> Tenant:
        """A fresh tenant with its owner's client."""
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        created = (
            await self.client.as_(self.bootstrap).post("/api/v1/tenants", {"name": name})
        ).ok(201)
        return Tenant(
            created["id"],
            created["root_scope_id"],
            self.client.as_(created["owner_token"]),
            created["owner_token"],
        )


@dataclass
class Tenant:
    id: str
    root: str
    owner: Client
    owner_token: str

    async def scope(self, parent: str, level: str, name: str) -> str:
        body = (
            await self.owner.post(
                "/api/v1/scopes", {"parent_id": parent, "level": level, "name": name}
            )
        ).ok(201)
        return str(body["id"])

    async def principal(
        self, name: str, roles: list[str], scope: str | None = None, **extra: Any
    ) -> Client:
        """Create a principal and return a client holding a fresh token of theirs."""
        created = (
            await self.owner.post(
                "/api/v1/principals",
                {"name": name, "roles": roles, "scope_id": scope or self.root, **extra},
            )
        ).ok(201)
        token = (
            await self.owner.post(f"/api/v1/principals/{created['id']}/tokens", {"name": "test"})
        ).ok(201)
        return self.owner.as_(token["token"])


@contextlib.asynccontextmanager
async def start_control_plane(
    env: Mapping[str, str], **overrides: Any
) -> AsyncIterator[ControlPlane]:
    """Run the control plane app on a loopback port for the duration of the block."""
    settings = ControlPlaneSettings(**overrides)
    app = await create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("")).rstrip("/")
            yield ControlPlane(
                url, app[STATE], settings, Client(http, url), env["GOODBOT_CP_BOOTSTRAP_TOKEN"]
            )
    finally:
        await server.close()
