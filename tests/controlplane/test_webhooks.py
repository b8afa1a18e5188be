"""Webhooks through the HTTP API, delivered to a real receiver on 127.0.0.1: signing, retries."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from controlplane.models import Event, WebhookDelivery
from tests.controlplane.client import ControlPlane, Tenant, start_control_plane

CLOSED_PORT_URL = "http://127.0.0.1:9/hook"
"""A loopback URL nothing listens on (the discard port): deliveries there fail fast, locally."""


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes
    at: float
    """``time.monotonic()`` when it arrived."""


@dataclass
class Receiver:
    """A subscriber's endpoint: answers with the scripted statuses, the last one repeating."""

    statuses: list[int]
    url: str = ""
    calls: list[Call] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(Call(dict(request.headers), await request.read(), time.monotonic()))
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        return web.Response(status=status, text="ok" if status < 300 else "try later")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(call.body) for call in self.calls]


@contextlib.asynccontextmanager
async def receiver(*statuses: int) -> AsyncIterator[Receiver]:
    rec = Receiver(list(statuses) or [200])
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        rec.url = str(server.make_url("/hook"))
        yield rec
    finally:
        await server.close()


@pytest.fixture
async def fast_cp(
    cp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ControlPlane]:
    """A control plane whose webhook sender polls and backs off in tens of milliseconds."""
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_POLL_SECONDS", "0.05")
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_BACKOFF_BASE_SECONDS", "0.05")
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_MAX_ATTEMPTS", "3")
    async with start_control_plane(cp_env) as handle:
        yield handle


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    """Wait until ``check`` holds, polling; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"not true within {within} s"
        await asyncio.sleep(0.01)


def signed(secret: str, call: Call) -> bool:
    """Check a delivery the way a receiver would, from the documented scheme alone."""
    timestamp = call.headers["X-Goodbot-Timestamp"]
    mac = hmac.new(secret.encode(), f"{timestamp}.{call.body.decode()}".encode(), hashlib.sha256)
    return hmac.compare_digest(call.headers["X-Goodbot-Signature"], f"v1={mac.hexdigest()}")


async def subscribe(t: Tenant, url: str, *types: str) -> dict[str, Any]:
    body: dict[str, Any] = (
        await t.owner.post("/api/v1/webhooks", {"url": url, "event_types": list(types)})
    ).ok(201)
    return body


async def deliveries(cp: ControlPlane, webhook_id: str) -> list[WebhookDelivery]:
    async with cp.state.sessions() as session:
        rows = await session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == webhook_id)
            .order_by(WebhookDelivery.id)
        )
        return list(rows.scalars())


async def test_webhook_subscriptions_are_validated_listed_and_deleted(cp: ControlPlane) -> None:
    a, b = await cp.tenant(), await cp.tenant()
    bad = [
        ({"url": "ftp://127.0.0.1/x", "event_types": ["*"]}, "url"),
        ({"url": "/relative", "event_types": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:99999/x", "event_types": ["*"]}, "url"),
        ({"url": "http://127.0.0.1/a b", "event_types": ["*"]}, "url"),
        ({"url": CLOSED_PORT_URL, "event_types": ["no_such_type"]}, "event_types"),
        ({"url": CLOSED_PORT_URL, "event_types": []}, "event_types"),
    ]
    for body, where in bad:
        response = await a.owner.post("/api/v1/webhooks", body)
        assert response.status == 422, (body, response.body)
        assert response.body["error"]["field"].startswith(where)
    created = await subscribe(a, CLOSED_PORT_URL, "drift_detected", "drift_detected")
    assert created["secret"].startswith("whsec_") and created["event_types"] == ["drift_detected"]
    listed = (await a.owner.get("/api/v1/webhooks")).ok()["items"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert (await b.owner.get("/api/v1/webhooks")).ok()["items"] == []
    viewer = await a.principal("vic", ["viewer"])
    assert (await viewer.get("/api/v1/webhooks")).status == 403
    assert (
        await viewer.post("/api/v1/webhooks", {"url": CLOSED_PORT_URL, "event_types": ["*"]})
    ).status == 403
    path = f"/api/v1/webhooks/{created['id']}"
    assert (await b.owner.request("DELETE", path)).status == 404
    assert (await a.owner.request("DELETE", path)).status == 204
    assert (await a.owner.request("DELETE", path)).status == 404
    assert (await a.owner.get("/api/v1/webhooks")).ok()["items"] == []
    audit = (await a.owner.get("/api/v1/events", params={"type": "webhook_changed"})).ok()
    assert [e["action"] for e in audit["items"]] == ["webhook.create", "webhook.delete"]
    assert audit["items"][0]["data"]["host"] == "127.0.0.1"


async def test_an_event_is_delivered_signed_and_only_to_its_tenant(fast_cp: ControlPlane) -> None:
    cp = fast_cp
    a, b = await cp.tenant(), await cp.tenant()
    async with receiver() as rec_a, receiver() as rec_b:
        hook_b = await subscribe(b, rec_b.url, "*")
        hook_a = await subscribe(a, rec_a.url, "scope_changed")
        scope = await a.scope(a.root, "department", "engineering")
        await eventually(lambda: len(rec_a.calls) == 1)
        # B's own subscription event reaches B's receiver: proof its sender ran.
        await eventually(lambda: len(rec_b.calls) >= 1)

    call = rec_a.calls[0]
    assert signed(hook_a["secret"], call)
    assert not signed(hook_b["secret"], call)
    assert abs(int(call.headers["X-Goodbot-Timestamp"]) - time.time()) < 60
    assert call.headers["Content-Type"] == "application/json"
    event = rec_a.events()[0]
    assert (event["tenant_id"], event["type"], event["scope_id"]) == (a.id, "scope_changed", scope)
    assert call.headers["X-Goodbot-Event-Id"] == f"{a.id}:{event['seq']}"
    exported = (await a.owner.get("/api/v1/events/export")).body.splitlines()
    assert json.loads(exported[event["seq"] - 1]) == event

    assert {e["tenant_id"] for e in rec_b.events()} == {b.id}
    assert all(signed(hook_b["secret"], c) for c in rec_b.calls)
    async with cp.state.sessions() as session:
        tenants = await session.execute(
            select(Event.tenant_id)
            .join(WebhookDelivery, WebhookDelivery.event_id == Event.id)
            .where(WebhookDelivery.subscription_id == hook_b["id"])
        )
        assert set(tenants.scalars()) == {b.id}
    (delivery,) = await deliveries(cp, hook_a["id"])
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 1, None)


async def test_a_failed_delivery_is_retried_with_backoff(fast_cp: ControlPlane) -> None:
    cp = fast_cp
    t = await cp.tenant()
    async with receiver(500, 500, 200) as rec:
        hook = await subscribe(t, rec.url, "scope_changed")
        await t.scope(t.root, "department", "engineering")

        async def delivered() -> bool:
            return [d.status for d in await deliveries(cp, hook["id"])] == ["delivered"]

        await eventually(delivered)
    assert len(rec.calls) == 3
    assert len({c.headers["X-Goodbot-Event-Id"] for c in rec.calls}) == 1
    assert all(signed(hook["secret"], c) for c in rec.calls)
    first, second, third = (c.at for c in rec.calls)
    # Base 0.05 s, doubling; a little slack for the wall clock the schedule is kept in.
    assert second - first >= 0.04 and third - second >= 0.09
    (delivery,) = await deliveries(cp, hook["id"])
    assert delivery.attempts == 3 and delivery.delivered_at is not None


async def test_a_delivery_is_given_up_after_the_last_attempt(fast_cp: ControlPlane) -> None:
    cp = fast_cp
    t = await cp.tenant()
    async with receiver(500) as rec:
        hook = await subscribe(t, rec.url, "scope_changed")
        await t.scope(t.root, "department", "engineering")

        async def failed() -> bool:
            return [d.status for d in await deliveries(cp, hook["id"])] == ["failed"]

        await eventually(failed)
    assert len(rec.calls) == 3
    (delivery,) = await deliveries(cp, hook["id"])
    assert (delivery.attempts, delivery.last_error) == (3, "HTTP 500")


async def test_deleting_a_webhook_cancels_its_pending_deliveries(cp: ControlPlane) -> None:
    # Default settings: the first retry waits two seconds, time enough to delete the webhook.
    t = await cp.tenant()
    hook = await subscribe(t, CLOSED_PORT_URL, "scope_changed")
    await t.scope(t.root, "department", "engineering")

    async def tried() -> bool:
        return [d.attempts > 0 for d in await deliveries(cp, hook["id"])] == [True]

    await eventually(tried)
    assert (await t.owner.request("DELETE", f"/api/v1/webhooks/{hook['id']}")).status == 204
    (delivery,) = await deliveries(cp, hook["id"])
    assert delivery.status == "cancelled"
    assert delivery.last_error is not None and "ClientConnectorError" in delivery.last_error


async def test_the_sender_is_woken_by_the_commit_not_the_poll(
    cp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_POLL_SECONDS", "600")
    async with start_control_plane(cp_env) as cp, receiver() as rec:
        t = await cp.tenant()
        await subscribe(t, rec.url, "scope_changed")
        await t.scope(t.root, "department", "engineering")
        await eventually(lambda: len(rec.calls) == 1, within=5.0)


async def test_webhooks_reach_public_addresses_only_unless_allowed(
    cp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "false")
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_POLL_SECONDS", "0.05")
    monkeypatch.setenv("GOODBOT_CP_WEBHOOK_MAX_ATTEMPTS", "1")
    async with start_control_plane(cp_env) as cp, receiver() as rec:
        t = await cp.tenant()
        for literal in (
            rec.url,
            "http://10.1.2.3/hook",
            "http://[::1]:9/hook",
            "http://169.254.169.254/latest/meta-data",
        ):
            refused = await t.owner.post("/api/v1/webhooks", {"url": literal, "event_types": ["*"]})
            assert refused.status == 422, literal
            assert "public addresses only" in refused.body["error"]["message"]
        # A host name is accepted, but it resolves to loopback: nothing is sent.
        by_name = rec.url.replace("127.0.0.1", "localhost")
        sub = await subscribe(t, by_name, "scope_changed")
        await t.scope(t.root, "department", "after-subscribe")

        async def given_up() -> bool:
            rows = await deliveries(cp, sub["id"])
            return bool(rows) and rows[0].status == "failed"

        await eventually(given_up)
        assert "no public address" in ((await deliveries(cp, sub["id"]))[0].last_error or "")
        assert rec.calls == []
