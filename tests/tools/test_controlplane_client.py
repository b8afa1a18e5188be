"""The tools' control-plane client against a real control plane, a closed port and a slow server."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from controlplane.demo_release import LOW_RISK, DemoApi, release
from tests.controlplane.client import ControlPlane, Tenant
from tools.controlplane import ControlPlaneClient
from tools.errors import (
    ConflictError,
    ControlPlaneError,
    ControlPlaneUnavailableError,
    InvalidError,
    NotAllowedError,
    NotFoundError,
)


async def gateway(cp: ControlPlane, t: Tenant) -> ControlPlaneClient:
    """A client holding a fresh gateway credential (``gw``, may act for others)."""
    gw = await t.principal("gw", ["viewer"], may_act_for_others=True)
    assert gw.token is not None
    return ControlPlaneClient(cp.url, SecretStr(gw.token), timeout=10)


def leaks(token: str, exc: ControlPlaneError) -> bool:
    return any(token in text for text in (str(exc), repr(exc), exc.message, str(exc.details)))


async def test_acting_as_another_principal_is_reflected(cp: ControlPlane) -> None:
    t = await cp.tenant()
    await t.principal("vera", ["viewer"])
    async with await gateway(cp, t) as client:
        me = await client.whoami("vera")
        assert (me.name, me.roles, me.via) == ("vera", ("viewer",), "gw")
        # An unknown acting principal is refused with the control plane's reason.
        with pytest.raises(NotAllowedError) as refused:
            await client.whoami("nobody")
    assert refused.value.status == 403 and refused.value.field == "X-Act-As"
    assert "no principal named 'nobody'" in refused.value.message


async def test_a_missing_permission_is_not_allowed_with_the_reason(cp: ControlPlane) -> None:
    t = await cp.tenant()
    await t.principal("vera", ["viewer"])
    async with await gateway(cp, t) as client:
        with pytest.raises(NotAllowedError) as denied:
            await client.pause("vera", "rol_anything", "looks wrong", request_id="turn-7")
    err = denied.value
    assert (err.status, err.code, err.request_id) == (403, "forbidden", "turn-7")
    assert err.message == "none of the roles ['viewer'] grants rollout.operate"
    assert err.details == {"rule": "default:deny"}


async def test_a_bad_token_is_not_allowed(cp: ControlPlane) -> None:
    async with ControlPlaneClient(cp.url, "gbt_not-a-real-token") as client:
        with pytest.raises(NotAllowedError) as denied:
            await client.whoami("ana")
    assert denied.value.status == 401 and denied.value.message == "unknown API token"


async def test_unknown_ids_are_not_found(cp: ControlPlane) -> None:
    t = await cp.tenant()
    await t.principal("adm", ["admin"])
    async with await gateway(cp, t) as client:
        calls: list[Any] = [
            client.device_compliance("adm", "dev_missing"),
            client.scope_compliance("adm", "scp_missing"),
            client.rollout("adm", "rol_missing"),
            client.version_risk("adm", "ver_missing"),
            client.decide_approval("adm", "apr_missing", "approve"),
            client.promote("adm", "rol_missing", 0),
        ]
        for call in calls:
            with pytest.raises(NotFoundError) as missing:
                await call
            assert missing.value.status == 404 and missing.value.request_id
        # An id that could walk the URL path is refused before anything is sent.
        with pytest.raises(InvalidError) as bad:
            await client.device_compliance("adm", "../tenant")
        assert bad.value.field == "device_id" and bad.value.status is None


async def test_the_token_never_shows(cp: ControlPlane) -> None:
    t = await cp.tenant()
    gw = await t.principal("gw", ["viewer"], may_act_for_others=True)
    token = gw.token
    assert token is not None
    for secret in (token, SecretStr(token)):
        client = ControlPlaneClient(cp.url, secret)
        assert token not in repr(client) and token not in str(client)
        async with client:
            assert token not in repr(client)
            for call in (client.whoami("nobody"), client.device_compliance("gw", "dev_x")):
                with pytest.raises(ControlPlaneError) as caught:
                    await call
                assert not leaks(token, caught.value)
    async with ControlPlaneClient(f"http://127.0.0.1:{closed_port()}", token) as down:
        with pytest.raises(ControlPlaneUnavailableError) as unavailable:
            await down.whoami("gw")
    assert not leaks(token, unavailable.value)


async def test_lookups_by_name_and_lists(cp: ControlPlane) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "Engineering")
    for name in ("mac-a", "mac-b"):
        body = {"name": name, "platform": "macos", "scope_ids": [team]}
        (await t.owner.post("/api/v1/devices", body)).ok(201)
    await t.principal("adm", ["admin"])
    async with await gateway(cp, t) as client:
        found = await client.find_devices("adm", "MAC-B")
        assert found.complete and [d["name"] for d in found.items] == ["mac-b"]
        assert (await client.find_devices("adm", "mac-z")).items == ()
        scopes = await client.find_scopes("adm", "engineering")
        assert [s["id"] for s in scopes.items] == [team]
        counts = await client.scope_compliance("adm", team)
        assert counts["scope_id"] == team and counts["devices"] == 2
        device = await client.device_compliance("adm", found.items[0]["id"])
        assert device["state"] == "unknown"
        registered = await client.events("adm", type="device_registered", limit=1)
        assert [e["data"]["name"] for e in registered] == ["mac-b"]
        assert await client.apps("adm") == [] and await client.rollouts("adm") == []


@pytest.fixture
async def cab_pending(cp: ControlPlane) -> tuple[Tenant, str, str]:
    """A privileged app's rollout in ring 0 whose promote asked CAB; (tenant, rollout, approval).

    Every step goes through the control plane's HTTP API as the principal whose duty it is.
    """
    t = await cp.tenant()
    tokens: dict[str, Any] = {}
    for name, roles in (("omar", ["publisher", "packaging_engineer"]), ("ana", ["cab_approver"])):
        client = await t.principal(name, roles)
        tokens[name] = {"token": client.token}
    await t.principal("li", ["cab_approver"])
    async with aiohttp.ClientSession() as http:
        api = DemoApi(http, cp.url, tokens)
        app = {
            "name": "falcon",
            "owner": "omar",
            "category": "security",
            "support_tier": "tier1",
            "allowed_scope_ids": [t.root],
            "privileged": True,
        }
        await api.call("omar", "POST", "/apps", app)
        version = await release(api, "falcon", "7.18.0", risk=LOW_RISK, new_app=False)
        intent = {"client_key": "falcon", "version_id": version, "target_scope_id": t.root}
        rollout = (await api.call("omar", "POST", "/intents", {**intent, "ring": 0}))["rollout_id"]
        refused = await api.call("omar", "POST", f"/rollouts/{rollout}/promote", ok=(409,))
    return t, rollout, str(refused["error"]["details"]["approval_id"])


async def test_a_pending_approval_is_listed_and_decided(
    cp: ControlPlane, cab_pending: tuple[Tenant, str, str]
) -> None:
    t, _, approval_id = cab_pending
    async with await gateway(cp, t) as client:
        pending = await client.pending_approvals("li")
        assert pending.principal == "li" and not pending.truncated
        assert [(i["kind"], i["id"]) for i in pending.items] == [("cab_approval", approval_id)]
        # The requester has nothing to decide, and may not decide it.
        assert (await client.pending_approvals("omar")).items == ()
        with pytest.raises(NotAllowedError):
            await client.decide_approval("omar", approval_id, "approve")
        decided = await client.decide_approval(
            "li", approval_id, "approve", "fine for canary", ["watch crash reports"]
        )
        assert decided["decision"] == "approved" and decided["in_force"]
        assert decided["conditions"] == ["watch crash reports"]
        assert decided["comment"] == "fine for canary"
        assert (await client.pending_approvals("li")).items == ()
        with pytest.raises(ConflictError):
            await client.decide_approval("ana", approval_id, "deny", idempotency_key="k-1")


async def test_promote_conflicts_carry_the_gates_and_a_stale_ring(
    cp: ControlPlane, cab_pending: tuple[Tenant, str, str]
) -> None:
    t, rollout, approval_id = cab_pending
    async with await gateway(cp, t) as client:
        assert (await client.rollout("omar", rollout))["ring"] == 0
        with pytest.raises(ConflictError) as waiting:
            await client.promote("omar", rollout, from_ring=0, idempotency_key="k-2")
        assert waiting.value.details["approval_id"] == approval_id
        assert waiting.value.details["gates"]
        with pytest.raises(ConflictError) as stale:
            await client.promote("omar", rollout, from_ring=2)
        assert stale.value.field == "from_ring"
        assert "not ring 2" in stale.value.message
        paused = await client.pause("omar", rollout, "holding for CAB")
        assert paused["status"] == "Paused" and paused["paused_reason"] == "holding for CAB"
        assert (await client.resume("omar", rollout))["intent_state"] == "active"
        listed = await client.rollouts("omar", app_id=paused["application_id"])
        assert [r["id"] for r in listed] == [rollout]
        apps = await client.apps("omar", name="falcon")
        assert [a["id"] for a in apps] == [paused["application_id"]]
        risk = await client.version_risk("omar", paused["version_id"])
        assert risk["model_version"] == "1.0" and 0 <= risk["score"] <= 100
        rolled = await client.rollback("omar", rollout, "vendor recalled the build")
        assert (rolled["status"], rolled["intent_state"]) == ("Degraded", "rolled_back")
        with pytest.raises(ConflictError):  # nothing in flight to promote any more
            await client.promote("omar", rollout, from_ring=0)


# -- faults: a closed port, a slow server, a failing server ---------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_closed_port_is_unavailable() -> None:
    async with ControlPlaneClient(
        f"http://127.0.0.1:{closed_port()}", "secret", backoff=0.01
    ) as client:
        with pytest.raises(ControlPlaneUnavailableError) as down:
            await client.whoami("ana", request_id="turn-1")
    assert down.value.status is None and down.value.request_id == "turn-1"
    assert "not answering" in down.value.message


async def serve(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


async def test_a_slow_control_plane_is_unavailable_within_the_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    server = await serve(slow)
    try:
        url = str(server.make_url("")).rstrip("/")
        async with ControlPlaneClient(url, "secret", timeout=0.2) as client:
            started = time.monotonic()
            with pytest.raises(ControlPlaneUnavailableError) as slow_answer:
                await client.rollouts("ana")
            took = time.monotonic() - started
    finally:
        await server.close()
    assert "within 0.2 s" in slow_answer.value.message
    assert took < 2  # bounded by the call's timeout (retries included), not the server


async def test_only_gets_are_retried() -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    async def failing(request: web.Request) -> web.Response:
        seen.append(
            (request.method, request.headers.get("X-Request-Id"), request.headers.get("X-Act-As"))
        )
        body = {"error": {"code": "internal", "message": "boom", "request_id": "r"}}
        return web.json_response(body, status=503)

    server = await serve(failing)
    try:
        url = str(server.make_url("")).rstrip("/")
        async with ControlPlaneClient(url, "secret", backoff=0.01) as client:
            with pytest.raises(ControlPlaneUnavailableError) as get:
                await client.rollout("ana", "rol_1", request_id="turn-9")
            assert seen == [("GET", "turn-9", "ana")] * 3  # one try and two retries
            assert get.value.status == 503 and get.value.message == "boom"
            seen.clear()
            with pytest.raises(ControlPlaneUnavailableError):
                await client.promote("ana", "rol_1", from_ring=1, idempotency_key="k")
            assert [method for method, _, _ in seen] == ["POST"]
    finally:
        await server.close()
