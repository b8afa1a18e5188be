"""A release end to end through the API: the fleet simulator carries it from ring 0 to ring 2."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp

from controlplane.connectors import TaskRunner
from controlplane.connectors.simulator import FleetSimulator
from controlplane.connectors.worker import tick
from controlplane.demo_release import LOW_RISK, DemoApi, release
from controlplane.models import utcnow
from tests.controlplane.client import ControlPlane


async def test_simulator_drives_a_rollout_from_lab_to_pilot(cp: ControlPlane) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "eng")
    tokens: dict[str, Any] = {}
    for name, roles in (("omar", ["publisher", "packaging_engineer"]), ("ana", ["cab_approver"])):
        created = (
            await t.owner.post(
                "/api/v1/principals", {"name": name, "roles": roles, "scope_id": t.root}
            )
        ).ok(201)
        secret = (
            await t.owner.post(f"/api/v1/principals/{created['id']}/tokens", {"name": "e2e"})
        ).ok(201)["token"]
        tokens[name] = {"token": secret}
    devices: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for ring, count in ((0, 3), (1, 25), (2, 55)):
        for n in range(count):
            body = {
                "name": f"mac-r{ring}-{n}",
                "platform": "macos",
                "ring": ring,
                "scope_ids": [team],
            }
            devices[ring].append((await t.owner.post("/api/v1/devices", body)).ok(201)["id"])
    simulator = FleetSimulator(cp.state)
    runner = TaskRunner(cp.state, simulator)
    hours = 0

    async def step() -> None:
        nonlocal hours
        for _ in range(2):  # publish the ring, then resolve its installs
            hours += 1
            await tick(cp.state, simulator, runner, now=utcnow() + timedelta(hours=hours))

    async with aiohttp.ClientSession() as http:
        api = DemoApi(http, cp.url, tokens)
        # The app is created here, with this tenant's scope; release() does the rest as the demo.
        await api.call(
            "omar",
            "POST",
            "/apps",
            {
                "name": "firefox",
                "owner": "omar",
                "category": "browser",
                "support_tier": "tier1",
                "allowed_scope_ids": [t.root],
            },
        )
        version = await release(api, "firefox", "131.0.3", risk=LOW_RISK, new_app=False)
        created = await api.call(
            "omar",
            "POST",
            "/intents",
            {
                "client_key": "e2e-firefox",
                "version_id": version,
                "target_scope_id": t.root,
                "ring": 0,
                "constraints": {"simulate_success_rate": 1.0},
            },
        )
        rollout = created["rollout_id"]
        seen: list[tuple[int, str]] = []
        for _ in range(2):
            await step()
            promoted = await api.call("omar", "POST", f"/rollouts/{rollout}/promote")
            seen.append((promoted["ring"], promoted["status"]))
        await step()
        status = await api.call("omar", "POST", f"/rollouts/{rollout}/evaluate")
    assert seen == [(1, "Progressing"), (2, "Progressing")]
    assert status["ring"] == 2 and status["status"] == "Healthy"
    success = next(g for g in status["gates"] if g["name"] == "install_success_rate")
    assert success["verdict"] == "passed" and success["detail"]["reported"] == 55
    # every device of rings 0-2 now reports the new version, and its compliance moved with it
    for ring in (0, 1, 2):
        inventory = (await t.owner.get(f"/api/v1/devices/{devices[ring][0]}/inventory")).ok()
        assert ("firefox", "131.0.3") in {(p["name"], p["version"]) for p in inventory["packages"]}
