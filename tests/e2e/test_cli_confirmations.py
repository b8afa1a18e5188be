"""CLI end to end: ask, propose, confirm — and every way a confirmation must refuse to run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import requests

from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway


def cp_rollout(cp: DemoControlPlane, app: str) -> dict[str, object]:
    """The control plane's own view of an application's newest rollout (as ana)."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {cp.tokens['ana']}"
    apps = http.get(f"{cp.url}/api/v1/apps", params={"name": app}, timeout=10).json()["items"]
    (found,) = [a for a in apps if a["name"] == app]
    rollouts = http.get(
        f"{cp.url}/api/v1/rollouts", params={"app_id": found["id"]}, timeout=10
    ).json()["items"]
    return dict(max(rollouts, key=lambda r: r["updated_at"]))


async def propose_chrome(gw: GatewayUnderTest, principal: str = "ana") -> dict[str, object]:
    turn = await gw.turn(principal, "promote google-chrome to pilot")
    assert turn.status == 200, turn.error
    confirmation = turn.confirmation
    assert confirmation["state"] == "pending"
    assert confirmation["tool"] == "promote_rollout"
    assert confirmation["arguments"]["from_ring"] == 1
    assert confirmation["arguments"]["to_ring"] == 2
    return confirmation


async def test_promote_asks_then_changes_the_control_plane_once_confirmed(
    gw: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    confirmation = await propose_chrome(gw)
    pending = await gw.turn("ana", "/pending")
    assert str(confirmation["id"]) in pending.reply
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1  # nothing changed yet
    status, body = await gw.decide(
        "ana", str(confirmation["id"]), arguments_hash=str(confirmation["arguments_hash"])
    )
    assert status == 200, body
    assert body["outcome"] == "confirmed"
    assert body["result"]["status"] == "ok"
    assert body["confirmation"]["state"] == "executed"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2


async def test_the_wrong_principal_cannot_confirm(
    gw: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    confirmation = await propose_chrome(gw)
    status, body = await gw.decide("sam", str(confirmation["id"]))
    assert status == 403
    assert body["outcome"] == "wrong_principal"
    assert body["confirmation"] is None  # nothing of ana's is shown to sam
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_a_replayed_confirmation_does_nothing(
    gw: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    confirmation = await propose_chrome(gw)
    first, _ = await gw.decide("ana", str(confirmation["id"]))
    again, body = await gw.decide("ana", str(confirmation["id"]))
    assert (first, again) == (200, 409)
    assert body["outcome"] == "already_decided"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2


async def test_changed_arguments_are_refused(
    gw: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    confirmation = await propose_chrome(gw)
    status, body = await gw.decide("ana", str(confirmation["id"]), arguments_hash="0" * 64)
    assert status == 409
    assert body["outcome"] == "arguments_changed"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_an_expired_confirmation_does_nothing(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    async with running_gateway(
        tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, confirmation_ttl_seconds=1
    ) as gw:
        confirmation = await propose_chrome(gw)
        await asyncio.sleep(1.2)
        status, body = await gw.decide("ana", str(confirmation["id"]))
        assert status == 409
        assert body["outcome"] == "expired"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_concurrent_confirmations_execute_exactly_once(
    gw: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    confirmation = await propose_chrome(gw)
    results = await asyncio.gather(*(gw.decide("ana", str(confirmation["id"])) for _ in range(6)))
    outcomes = sorted(body["outcome"] for _, body in results)
    assert outcomes.count("confirmed") == 1
    assert outcomes.count("already_decided") == 5
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    executions = [
        line
        async for line in gw.gateway.store.export_audit()
        if '"confirmation.executed"' in line or '"confirmation.executing"' in line
    ]
    assert len(executions) == 2  # executing once, executed once


async def test_deny_changes_nothing(gw: GatewayUnderTest, demo_cp: DemoControlPlane) -> None:
    confirmation = await propose_chrome(gw)
    status, body = await gw.decide("ana", str(confirmation["id"]), "deny")
    assert status == 200
    assert body["outcome"] == "denied"
    assert body["confirmation"]["state"] == "denied"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_a_restart_between_confirm_and_execute_executes_once(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    data = tmp_path / "gw"
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        confirmation = await propose_chrome(gw)
        # Confirmed in the store, and the process stops before it executes.
        decided = await gw.gateway.store.decide(str(confirmation["id"]), "ana", "confirm")
        assert decided.outcome == "confirmed"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        stored = await gw.gateway.store.confirmation(str(confirmation["id"]))
        assert stored is not None and stored.state == "executed"
        assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        again = await gw.gateway.store.confirmation(str(confirmation["id"]))
        assert again is not None and again.state == "executed"
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2


async def test_a_crash_after_the_call_reuses_the_idempotency_key(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    """The control plane ran the call but the gateway died before recording it: on restart the
    same idempotency key is sent again, and the control plane answers without promoting twice."""
    data = tmp_path / "gw"
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        confirmation = await propose_chrome(gw)
        store = gw.gateway.store
        await store.decide(str(confirmation["id"]), "ana", "confirm")
        assert await store.begin_execution(str(confirmation["id"]))
        stored = await store.confirmation(str(confirmation["id"]))
        assert stored is not None
        args = stored.arguments
        await gw.gateway.cp.promote(
            "ana",
            str(args["rollout_id"]),
            int(args["from_ring"]),
            idempotency_key=stored.idempotency_key,
        )
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        resumed = await gw.gateway.store.confirmation(str(confirmation["id"]))
        assert resumed is not None and resumed.state == "executed", resumed
    rollout = cp_rollout(demo_cp, "google-chrome")
    assert rollout["ring"] == 2  # not pilot → broad
