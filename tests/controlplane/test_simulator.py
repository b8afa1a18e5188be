"""The fleet simulator: targeting, deterministic installs, inventory and compliance, rollback."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from controlplane.connectors import TaskRunner
from controlplane.connectors.simulator import FleetSimulator, draw, publish_key, success_rate
from controlplane.connectors.targeting import load_intent, target_devices
from controlplane.connectors.worker import tick
from controlplane.models import utcnow
from controlplane.models_release import (
    Application,
    AppVersion,
    ConnectorTask,
    DeploymentIntent,
    DeviceInstall,
    Rollout,
)
from tests.controlplane.client import ControlPlane, Tenant, start_control_plane


@pytest.fixture(autouse=True)
def _no_background_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests tick the simulator themselves, with a clock they control.
    monkeypatch.setenv("GOODBOT_CP_SIMULATOR_ENABLED", "false")


async def device(
    t: Tenant, name: str, scope: str, *, ring: int, platform: str = "macos", **extra: Any
) -> str:
    body = {"name": name, "platform": platform, "ring": ring, "scope_ids": [scope], **extra}
    return str((await t.owner.post("/api/v1/devices", body)).ok(201)["id"])


async def release(
    cp: ControlPlane,
    t: Tenant,
    *,
    target: str,
    app: str = "firefox",
    version: str = "134.0",
    ring: int = 0,
    status: str = "Progressing",
    constraints: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """An application version with an intent and its rollout, inserted directly (the intents
    API belongs to the rollouts module); returns (intent id, rollout id)."""
    suffix = uuid.uuid4().hex[:12]
    app_id, version_id = f"app_{suffix}", f"ver_{suffix}"
    intent_id, rollout_id = f"int_{suffix}", f"rol_{suffix}"
    async with cp.state.sessions.begin() as session:
        session.add(
            Application(
                id=app_id,
                tenant_id=t.id,
                name=app,
                owner="omar",
                category="browser",
                support_tier="standard",
                allowed_scope_ids=[t.root],
                created_by="omar",
            )
        )
        await session.flush()
        session.add(
            AppVersion(
                id=version_id,
                tenant_id=t.id,
                application_id=app_id,
                version=version,
                state="published",
                supported_os=["macos", "windows", "linux"],
                dependencies=[],
                requested_by="omar",
            )
        )
        await session.flush()
        session.add(
            DeploymentIntent(
                id=intent_id,
                tenant_id=t.id,
                client_key=f"key-{suffix}",
                request_digest="0" * 64,
                application_id=app_id,
                version_id=version_id,
                target_scope_id=target,
                ring=ring,
                schedule={},
                constraints=constraints or {},
                requested_by="omar",
            )
        )
        await session.flush()
        session.add(
            Rollout(id=rollout_id, tenant_id=t.id, intent_id=intent_id, ring=ring, status=status)
        )
    return intent_id, rollout_id


async def installs(cp: ControlPlane, intent_id: str) -> dict[str, DeviceInstall]:
    async with cp.state.sessions() as session:
        rows = await session.execute(
            select(DeviceInstall).where(DeviceInstall.intent_id == intent_id)
        )
        return {i.device_id: i for i in rows.scalars()}


async def statuses(cp: ControlPlane, intent_id: str) -> dict[str, str]:
    return {d: i.status for d, i in (await installs(cp, intent_id)).items()}


async def move_to_ring(cp: ControlPlane, rollout_id: str, ring: int) -> None:
    # Stands in for POST /rollouts/{id}/promote, whose gates need catalog, evidence and CAB
    # records that are beside the point here.
    async with cp.state.sessions.begin() as session:
        await session.execute(update(Rollout).where(Rollout.id == rollout_id).values(ring=ring))


class Sim:
    """A simulator with short site-class delays, ticked on a clock the test moves."""

    def __init__(self, cp: ControlPlane, **delays: float) -> None:
        self.cp = cp
        ticks = {"online": 0.0, "intermittent": 2.0, "air_gapped": 5.0} | delays
        self.simulator = FleetSimulator(cp.state, delay_ticks=ticks)
        self.runner = TaskRunner(cp.state, self.simulator)
        self.start = utcnow()

    async def tick(self, seconds: float = 0.0) -> Any:
        at: datetime = max(utcnow(), self.start) + timedelta(seconds=seconds)
        return await tick(self.cp.state, self.simulator, self.runner, now=at)


def test_draws_are_reproducible_and_spread_evenly() -> None:
    assert draw("int_a", "dev_1") == draw("int_a", "dev_1")
    assert draw("int_a", "dev_1") != draw("int_a", "dev_2")
    assert draw("int_a", "dev_1") != draw("int_a", "dev_1", seed="another fleet")
    values = [draw("int_spread", f"dev_{n}") for n in range(4000)]
    assert all(0 <= v < 1 for v in values)
    assert 1100 < sum(v < 0.3 for v in values) < 1300


def test_an_intent_may_override_the_success_rate() -> None:
    assert success_rate({}, 0.995) == 0.995
    assert success_rate({"simulate_success_rate": 0.25}, 0.995) == 0.25
    assert success_rate({"simulate_success_rate": 0}, 0.995) == 0.0
    for nonsense in (1.5, -0.1, "0.5", True, None):
        assert success_rate({"simulate_success_rate": nonsense}, 0.9) == 0.9


async def test_publish_reaches_the_current_ring_inside_the_target_scope(
    cp: ControlPlane,
) -> None:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "engineering")
    web = await t.scope(eng, "team", "web")
    lab = await t.scope(web, "environment", "lab")
    data = await t.scope(eng, "team", "data")
    ops = await t.scope(t.root, "department", "operations")
    inside = {
        await device(t, "lab-0", lab, ring=0),
        await device(t, "web-0", web, ring=0, site_class="intermittent"),
    }
    await device(t, "web-1", web, ring=1)  # a later ring
    await device(t, "ops-0", ops, ring=0)  # outside the target
    await device(t, "data-0", data, ring=0)  # excluded
    both = await device(t, "both-0", web, ring=0)
    (
        await t.owner.request("PATCH", f"/api/v1/devices/{both}", {"scope_ids": [web, data]})
    ).ok()  # a membership in an excluded subtree excludes the device
    intent_id, _ = await release(cp, t, target=eng, constraints={"exclude_scope_ids": [data]})
    sim = Sim(cp)

    # Ticks see every tenant (PostgreSQL tests share a schema): assertions stay on this one.
    await sim.tick()
    assigned = await installs(cp, intent_id)
    assert set(assigned) == inside
    assert {(i.ring, i.status, i.tenant_id) for i in assigned.values()} == {(0, "pending", t.id)}
    assert sorted(i.site_class for i in assigned.values()) == ["intermittent", "online"]

    # The publish task is settled: later ticks do not publish the ring again.
    await sim.tick(1)
    async with cp.state.sessions() as session:
        task = (
            await session.execute(
                select(ConnectorTask).where(
                    ConnectorTask.idempotency_key == publish_key(intent_id, 0)
                )
            )
        ).scalar_one()
        intent = await load_intent(session, intent_id)
        assert intent is not None
        capped = dataclasses.replace(intent, constraints=intent.constraints | {"max_devices": 1})
        first = await target_devices(session, capped)
    assert (task.status, task.connector, task.attempts) == ("done", "simulator", 1)
    assert task.result["assigned"] == 2
    assert [d.id for d in first] == [min(inside)]


async def test_installs_resolve_deterministically(cp: ControlPlane) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "engineering")
    ids = [await device(t, f"mac-{n}", team, ring=0) for n in range(12)]
    half, _ = await release(cp, t, target=team, constraints={"simulate_success_rate": 0.5})
    sim = Sim(cp)

    await sim.tick()
    assert set((await statuses(cp, half)).values()) == {"pending"}
    await sim.tick(1)

    expected = {d: "succeeded" if draw(half, d) < 0.5 else "failed" for d in ids}
    assert await statuses(cp, half) == expected
    # Resolved installs stay resolved.
    await sim.tick(2)
    assert await statuses(cp, half) == expected

    doomed, _ = await release(
        cp, t, target=team, app="thunderbird", constraints={"simulate_success_rate": 0.0}
    )
    await sim.tick(3)
    await sim.tick(4)
    assert set((await statuses(cp, doomed)).values()) == {"failed"}


async def test_slower_site_classes_resolve_later(cp: ControlPlane) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "engineering")
    online = await device(t, "mac-online", team, ring=0)
    remote = await device(t, "mac-remote", team, ring=0, site_class="intermittent")
    intent_id, _ = await release(cp, t, target=team, constraints={"simulate_success_rate": 1.0})
    sim = Sim(cp)  # intermittent waits 2 ticks of 2 s

    await sim.tick()
    await sim.tick(1)
    assert await statuses(cp, intent_id) == {online: "succeeded", remote: "pending"}
    await sim.tick(5)
    assert await statuses(cp, intent_id) == {online: "succeeded", remote: "succeeded"}


async def test_a_paused_or_cancelled_rollout_is_left_alone(cp: ControlPlane) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "engineering")
    await device(t, "mac-1", team, ring=0)
    paused, _ = await release(cp, t, target=team, status="Paused")
    cancelled, _ = await release(cp, t, target=team, app="thunderbird")
    async with cp.state.sessions.begin() as session:
        await session.execute(
            update(DeploymentIntent)
            .where(DeploymentIntent.id == cancelled)
            .values(state="cancelled")
        )
    sim = Sim(cp)
    await sim.tick()
    assert await installs(cp, paused) == {} and await installs(cp, cancelled) == {}


async def test_success_updates_inventory_and_compliance_and_rollback_restores_it(
    cp: ControlPlane,
) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "engineering")
    bundle = {
        "policy_id": "browsers",
        "policy_version": 1,
        "scope_bindings": [t.root],
        "required_packages": [{"manager": "brew", "name": "firefox", "versions": ">=134"}],
    }
    (await t.owner.post("/api/v1/policies", {"bundle": bundle})).ok(201)
    mac = await device(t, "mac-1", team, ring=0)
    win = await device(t, "win-1", team, ring=0, platform="windows")
    old = [
        {"manager": "brew", "name": "firefox", "version": "133.0", "pinned": True},
        {"manager": "brew", "name": "git", "version": "2.47.1"},
    ]
    body = {"sequence": 5, "packages": old}
    (await t.owner.post(f"/api/v1/devices/{mac}/inventory", body)).ok()
    assert await compliance(t, mac) == "warning"  # firefox 133 is out of range
    intent_id, _ = await release(cp, t, target=team, constraints={"simulate_success_rate": 1.0})
    sim = Sim(cp)

    await sim.tick()
    await sim.tick(1)

    mac_inventory = (await t.owner.get(f"/api/v1/devices/{mac}/inventory")).ok()
    assert mac_inventory["sequence"] == 6
    assert mac_inventory["packages"] == [
        {"manager": "brew", "name": "firefox", "version": "134.0", "pinned": True},
        {"manager": "brew", "name": "git", "version": "2.47.1", "pinned": False},
    ]
    win_inventory = (await t.owner.get(f"/api/v1/devices/{win}/inventory")).ok()
    assert win_inventory["sequence"] == 0
    assert win_inventory["packages"] == [
        {"manager": "winget", "name": "firefox", "version": "134.0", "pinned": False}
    ]
    assert await compliance(t, mac) == "compliant"
    # Its policy wants brew's firefox, which a Windows device never has.
    assert await compliance(t, win) == "non_compliant"
    done = await installs(cp, intent_id)
    assert (done[mac].previous_version, done[win].previous_version) == ("133.0", None)
    assert done[mac].reported_at is not None
    device_info = (await t.owner.get(f"/api/v1/devices/{mac}")).ok()
    assert device_info["last_checkin_at"] is not None
    events = await device_events(t, mac)
    assert ("inventory_reported", "connector:simulator") in events
    assert ("compliance_evaluated", "connector:simulator") in events

    async with cp.state.sessions() as session:
        intent = await load_intent(session, intent_id)
    assert intent is not None
    rolled = await sim.runner.remediate(
        intent,
        None,
        "rollback",
        key=f"rollback:{intent_id}",
        actor="ana",
        correlation_id="c",
    )
    assert rolled.status == "done" and rolled.result is not None and rolled.result.devices == 2
    assert set((await statuses(cp, intent_id)).values()) == {"rolled_back"}
    restored = (await t.owner.get(f"/api/v1/devices/{mac}/inventory")).ok()
    assert (restored["sequence"], restored["packages"][0]["version"]) == (7, "133.0")
    assert (await t.owner.get(f"/api/v1/devices/{win}/inventory")).ok()["packages"] == []
    assert await compliance(t, mac) == "warning"


async def compliance(t: Tenant, device_id: str) -> str:
    return str((await t.owner.get(f"/api/v1/devices/{device_id}/compliance")).ok()["state"])


async def device_events(t: Tenant, device_id: str) -> set[tuple[str, str]]:
    body = (await t.owner.get("/api/v1/events", params={"device_id": device_id})).ok()
    return {(e["type"], e["actor"]) for e in body["items"]}


async def test_rings_install_in_turn_as_the_rollout_advances(cp: ControlPlane) -> None:
    t = await cp.tenant()
    team = await t.scope(t.root, "department", "engineering")
    rings = {
        ring: {await device(t, f"r{ring}-{n}", team, ring=ring) for n in range(2)}
        for ring in (0, 1, 2)
    }
    intent_id, rollout_id = await release(
        cp, t, target=t.root, constraints={"simulate_success_rate": 1.0}
    )
    sim = Sim(cp)

    seconds = 0.0
    for ring in (0, 1, 2):
        if ring:
            await move_to_ring(cp, rollout_id, ring)
        seconds += 1
        await sim.tick(seconds)  # publishes the ring
        seconds += 1
        await sim.tick(seconds)  # its devices report
        done = await installs(cp, intent_id)
        reached = set().union(*(rings[r] for r in range(ring + 1)))
        assert set(done) == reached
        assert {d: i.status for d, i in done.items()} == dict.fromkeys(reached, "succeeded")
        assert {i.ring for d, i in done.items() if d in rings[ring]} == {ring}

    body = (await t.owner.get("/api/v1/events", params={"type": "connector_task"})).ok()
    publishes = [e for e in body["items"] if e["action"] == "connector.publish"]
    assert [e["data"]["ring"] for e in publishes] == [0, 1, 2]
    assert {e["data"]["key"] for e in publishes} == {publish_key(intent_id, r) for r in (0, 1, 2)}


async def test_the_worker_runs_the_simulator_while_serving(cp_env: dict[str, str]) -> None:
    async with start_control_plane(
        cp_env, simulator_enabled=True, simulator_tick_seconds=0.05
    ) as cp:
        t = await cp.tenant()
        team = await t.scope(t.root, "department", "engineering")
        mac = await device(t, "mac-1", team, ring=0)
        intent_id, _ = await release(cp, t, target=team, constraints={"simulate_success_rate": 1.0})
        cp.state.wake("simulator")
        for _ in range(200):
            if await statuses(cp, intent_id) == {mac: "succeeded"}:
                break
            await asyncio.sleep(0.05)
        assert await statuses(cp, intent_id) == {mac: "succeeded"}
