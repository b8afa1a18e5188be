"""Idempotency-Key on mutating routes: replay, misuse, principals, concurrency, failures, expiry."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select, update

from controlplane.app import create_app
from controlplane.errors import RateLimitedError
from controlplane.http import Api, ApiRequest
from controlplane.models import IdempotencyKey, utcnow
from controlplane.settings import ControlPlaneSettings
from controlplane.state import STATE
from controlplane.sweeps import sweep_once
from tests.controlplane.client import Client, ControlPlane, Response
from tests.controlplane.test_approvals import acting, ask_cab, events, release, team
from tests.controlplane.test_rollouts import World, world

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def keyed(key: str) -> dict[str, str]:
    return {KEY: key}


async def promotable(cp: ControlPlane) -> tuple[World, str]:
    """A rollout in ring 1 whose gates pass (score 30, no CAB), and its promote path."""
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=20)
    return w, f"/api/v1/rollouts/{intent['rollout_id']}"


async def test_a_repeated_promote_runs_once_and_replays_the_response(cp: ControlPlane) -> None:
    w, rollout = await promotable(cp)
    first = await w.pub.post(f"{rollout}/promote", {"from_ring": 1}, headers=keyed("k-1"))
    assert first.ok()["ring"] == 2 and REPLAYED not in first.headers
    # Same key, same request (key order and spacing aside): the stored response, not a re-run.
    again = await w.pub.request(
        "POST",
        f"{rollout}/promote",
        data=b'{ "from_ring" : 1 }',
        headers={**keyed("k-1"), "Content-Type": "application/json"},
    )
    assert (again.status, again.body) == (200, first.body)
    assert again.headers[REPLAYED] == "true"
    assert len(await w.events("rollout_promoted")) == 1
    # Without the key the same request does run, and the rollout is no longer in ring 1.
    stale = await w.pub.post(f"{rollout}/promote", {"from_ring": 1})
    assert stale.status == 409 and stale.body["error"]["field"] == "from_ring"
    # The same key for another body or another path is refused, and changes nothing.
    for path, body in (
        (f"{rollout}/promote", {"from_ring": 2}),
        (f"{rollout}/pause", {"reason": "x"}),
    ):
        reused = await w.pub.post(path, body, headers=keyed("k-1"))
        assert reused.status == 422, reused.body
        error = reused.body["error"]
        assert (error["code"], error["field"]) == ("idempotency_key_reused", KEY)
        assert error["details"] == {"method": "POST", "path": f"{rollout}/promote"}
        assert error["request_id"] == reused.headers["X-Request-Id"]
    assert (await w.pub.get(rollout)).ok()["status"] != "Paused"


async def test_a_decision_is_replayed_per_acting_principal(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    approval = await ask_cab(cp, t, await release(cp, t))
    path = f"/api/v1/approvals/{approval.id}/decision"
    body = {"decision": "approve", "comment": "fine"}
    decided = await acting(people.gw, "ana").post(path, body, headers=keyed("turn-7"))
    assert decided.ok()["approver"] == "ana"
    # Ana's own token and the gateway acting for her are one principal: a replay.
    for ana in (people.ana, acting(people.gw, "ana")):
        replay = await ana.post(path, body, headers=keyed("turn-7"))
        assert (replay.status, replay.body, replay.headers[REPLAYED]) == (200, decided.body, "true")
    assert len(await events(t, "approval_decided")) == 1
    # Li's key of the same name is Li's own: the handler runs for her (and refuses, decided).
    li = await acting(people.gw, "li").post(path, body, headers=keyed("turn-7"))
    assert li.status == 409 and REPLAYED not in li.headers
    # A final refusal is stored as well: Li's repeat is her stored 409, not a new run.
    li_again = await acting(people.gw, "li").post(path, body, headers=keyed("turn-7"))
    assert (li_again.status, li_again.body, li_again.headers[REPLAYED]) == (409, li.body, "true")


async def test_two_principals_with_one_key_are_independent(cp: ControlPlane) -> None:
    w = await world(cp)
    gw = await w.t.principal("gw", ["viewer"], may_act_for_others=True)
    await w.t.principal("ops-a", ["endpoint_ops"], w.dept)
    await w.t.principal("ops-b", ["endpoint_ops"], w.dept)
    body = {"application_id": w.app_id, "title": "crash loop"}
    opened = [
        await acting(gw, name).post("/api/v1/incidents", body, headers=keyed("same"))
        for name in ("ops-a", "ops-b", "ops-a")
    ]
    a, b, a_again = (r.ok(201) for r in opened)
    assert a["id"] != b["id"] and a_again == a
    assert (a["opened_by"], b["opened_by"]) == ("ops-a", "ops-b")
    assert [REPLAYED in r.headers for r in opened] == [False, False, True]
    assert len(await incidents(w)) == 2


async def incidents(w: World) -> list[dict[str, Any]]:
    listed = await w.t.owner.get("/api/v1/incidents", params={"application_id": w.app_id})
    return list(listed.ok()["items"])


async def test_concurrent_requests_with_one_key_change_once(cp: ControlPlane) -> None:
    w = await world(cp)
    ops = await w.t.principal("ops", ["endpoint_ops"], w.dept)
    body = {"application_id": w.app_id, "title": "crash loop"}
    answers = await asyncio.gather(
        *(ops.post("/api/v1/incidents", body, headers=keyed("burst")) for _ in range(5))
    )
    ran = [r for r in answers if r.status == 201 and REPLAYED not in r.headers]
    assert len(ran) == 1
    for r in answers:
        if r is ran[0]:
            continue
        if r.status == 409:
            assert r.body["error"]["code"] == "idempotency_key_in_progress"
        else:
            assert (r.status, r.body, r.headers[REPLAYED]) == (201, ran[0].body, "true")
    assert [i["id"] for i in await incidents(w)] == [ran[0].body["id"]]
    assert len(await w.events("incident_changed")) == 1
    # Once the first has finished, a repeat is a replay.
    later = await ops.post("/api/v1/incidents", body, headers=keyed("burst"))
    assert (later.body, later.headers[REPLAYED]) == (ran[0].body, "true")


async def test_a_5xx_or_429_is_not_stored_and_a_retry_runs(cp_env: dict[str, str]) -> None:
    # A route registered on the real registry, mounted on the real application: it fails the
    # first time (a bug or an outage), is rate limited the second, and succeeds the third.
    runs: list[int] = []
    extra = Api()

    @extra.route("POST", "/flaky", summary="Fails, then works", permission=None, tag="test")
    async def flaky(req: ApiRequest) -> dict[str, int]:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            raise RuntimeError("simulated outage")
        if len(runs) == 2:
            raise RateLimitedError("busy", retry_after=1)
        return {"run": len(runs)}

    app = await create_app(ControlPlaneSettings(), workers=False)
    extra.mount(app)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("")).rstrip("/")
            cp = ControlPlane(
                url,
                app[STATE],
                app[STATE].settings,
                Client(http, url),
                cp_env["GOODBOT_CP_BOOTSTRAP_TOKEN"],
            )
            t = await cp.tenant()
            answers: list[Response] = []
            for _ in range(4):
                answers.append(await t.owner.post("/api/v1/flaky", {}, headers=keyed("retry")))
    finally:
        await server.close()
    assert [r.status for r in answers] == [500, 429, 200, 200]
    assert [r.headers.get(REPLAYED) for r in answers] == [None, None, None, "true"]
    assert answers[3].body == answers[2].body == {"run": 3}
    assert runs == [1, 2, 3]


async def test_keys_expire_after_a_day(cp: ControlPlane) -> None:
    w, rollout = await promotable(cp)
    (await w.pub.post(f"{rollout}/promote", {"from_ring": 1}, headers=keyed("lazy"))).ok()
    # Lazily: a claim replaces a key past its expiry.
    async with cp.state.sessions.begin() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == w.t.id, IdempotencyKey.key == "lazy")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    paused = await w.pub.post(f"{rollout}/pause", {"reason": "x"}, headers=keyed("lazy"))
    assert paused.ok()["status"] == "Paused" and REPLAYED not in paused.headers
    # And by the sweep, a day on.
    (await w.pub.post(f"{rollout}/resume", {}, headers=keyed("swept"))).ok()
    reused = await w.pub.post(f"{rollout}/pause", {"reason": "y"}, headers=keyed("swept"))
    assert reused.status == 422
    await sweep_once(cp.state, utcnow() + timedelta(hours=24, seconds=1))
    async with cp.state.sessions() as session:
        left = await session.scalar(
            select(func.count())
            .select_from(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == w.t.id)
        )
    assert left == 0
    again = await w.pub.post(f"{rollout}/pause", {"reason": "y"}, headers=keyed("swept"))
    assert again.ok()["paused_reason"] == "y" and REPLAYED not in again.headers


async def test_the_header_is_checked_and_documented(cp: ControlPlane) -> None:
    t = await cp.tenant()
    scope = {"parent_id": t.root, "level": "department", "name": "eng"}
    long = await t.owner.post("/api/v1/scopes", scope, headers=keyed("k" * 201))
    assert long.status == 400 and long.body["error"]["field"] == KEY
    assert (await t.owner.post("/api/v1/scopes", scope, headers=keyed("k" * 200))).status == 201
    # Reads ignore it; a token (a secret shown once) is never stored, so the key is refused.
    assert (await t.owner.get("/api/v1/whoami", headers=keyed("k" * 201))).status == 200
    me = (await t.owner.get("/api/v1/whoami")).ok()
    token_path = f"/api/v1/principals/{me['principal_id']}/tokens"
    refused = await t.owner.post(token_path, {"name": "ci"}, headers=keyed("t-1"))
    assert refused.status == 422
    assert refused.body["error"]["code"] == "idempotency_key_unsupported"
    (await t.owner.post(token_path, {"name": "ci"})).ok(201)
    document = (await cp.client.get("/api/v1/openapi.json")).ok()
    paths = document["paths"]

    def documented(path: str, method: str) -> bool:
        params = paths[f"/api/v1{path}"][method]["parameters"]
        return any(p["name"] == KEY and p["in"] == "header" for p in params)

    assert documented("/rollouts/{rollout_id}/promote", "post")
    assert documented("/devices/{device_id}", "patch")
    assert documented("/tokens/{token_id}", "delete")
    assert not documented("/principals/{principal_id}/tokens", "post")
    assert not documented("/tenants", "post") and not documented("/devices", "get")
    ok = paths["/api/v1/approvals/{approval_id}/decision"]["post"]["responses"]["200"]
    assert REPLAYED in ok["headers"]
