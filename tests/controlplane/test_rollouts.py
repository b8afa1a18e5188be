"""Deployment intents, ring gates and rollout verbs through the HTTP API, on both databases.

Catalog rows (application, version, artifact, evidence pack, risk assessment) and install
results are written straight into the database: they stand for what the catalog API and the
execution plane would have recorded, so each test sets exactly the state it judges.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from controlplane.evidence import pack_content, pack_digest
from controlplane.models import Device, utcnow
from controlplane.models_release import (
    Application,
    AppVersion,
    Artifact,
    DeviceInstall,
    EvidencePack,
    RiskAssessment,
)
from controlplane.release import EVIDENCE_PARTS
from tests.controlplane.client import Client, ControlPlane, Tenant


@pytest.fixture(autouse=True)
def _no_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fleet simulator would assign and resolve installs behind the tests' backs.
    monkeypatch.setenv("GOODBOT_CP_SIMULATOR_ENABLED", "false")


@dataclass
class World:
    cp: ControlPlane
    t: Tenant
    dept: str
    team: str
    finance: str
    pub: Client
    app_id: str
    version_id: str

    async def intent(self, ring: int = 0, **extra: Any) -> dict[str, Any]:
        body = {
            "client_key": extra.pop("client_key", uuid.uuid4().hex),
            "version_id": self.version_id,
            "target_scope_id": extra.pop("target_scope_id", self.dept),
            "ring": ring,
            **extra,
        }
        return dict((await self.pub.post("/api/v1/intents", body)).ok(201))

    async def installs(
        self,
        intent_id: str,
        ring: int,
        *,
        succeeded: int = 0,
        failed: int = 0,
        pending: int = 0,
        assigned_at: datetime | None = None,
    ) -> None:
        """Devices with install results in a ring, as an execution plane reports them."""
        now = utcnow()
        statuses = ["succeeded"] * succeeded + ["failed"] * failed + ["pending"] * pending
        tag = uuid.uuid4().hex[:8]
        devices = [
            {
                "id": f"dev_{tag}_{i:05d}",
                "tenant_id": self.t.id,
                "name": f"host-{tag}-{i}",
                "platform": "macos",
                "site_class": "online",
                "managed_mode": "managed-enforced",
                "ring": ring,
                "inventory_seq": -1,
                "inventory": [],
                "created_at": now,
                "updated_at": now,
            }
            for i in range(len(statuses))
        ]
        rows = [
            {
                "intent_id": intent_id,
                "device_id": d["id"],
                "tenant_id": self.t.id,
                "ring": ring,
                "site_class": "online",
                "status": status,
                "assigned_at": assigned_at or now,
                "reported_at": None if status == "pending" else now,
            }
            for d, status in zip(devices, statuses, strict=True)
        ]
        async with self.cp.state.sessions.begin() as session:
            if devices:
                await session.execute(insert(Device), devices)
                await session.execute(insert(DeviceInstall), rows)

    async def events(self, type: str) -> list[dict[str, Any]]:
        body = (await self.t.owner.get("/api/v1/events", params={"type": type})).ok()
        return list(body["items"])


async def world(
    cp: ControlPlane,
    *,
    score: float = 30.0,
    evidence: bool = True,
    state: str = "approved",
    allowed: str = "dept",
) -> World:
    t = await cp.tenant()
    dept = await t.scope(t.root, "department", "engineering")
    team = await t.scope(dept, "team", "platform")
    finance = await t.scope(t.root, "department", "finance")
    pub = await t.principal("pub", ["publisher"], dept)
    app_id, version_id = f"app_{uuid.uuid4().hex[:12]}", f"ver_{uuid.uuid4().hex[:12]}"
    allowed_scope = {"dept": dept, "team": team}[allowed]
    parts = {name: {"ref": f"{name}.json"} for name in EVIDENCE_PARTS}
    content = pack_content("firefox", "131.0.0", version_id, parts if evidence else {})
    async with cp.state.sessions.begin() as session:
        session.add(
            Application(
                id=app_id,
                tenant_id=t.id,
                name="firefox",
                owner="pub",
                category="browser",
                support_tier="standard",
                allowed_scope_ids=[allowed_scope],
                privileged=False,
                created_by="owner",
            )
        )
        await session.flush()
        session.add(
            AppVersion(
                id=version_id,
                tenant_id=t.id,
                application_id=app_id,
                version="131.0.0",
                state=state,
                supported_os=["macos"],
                dependencies=[],
                requested_by="owner",
            )
        )
        await session.flush()
        session.add_all(
            [
                Artifact(
                    id=f"art_{uuid.uuid4().hex[:12]}",
                    tenant_id=t.id,
                    version_id=version_id,
                    platform="macos",
                    sha256="a" * 64,
                    signing={"valid": True},
                    scan_result="pass",
                    findings={"critical": 0, "high": 0},
                ),
                EvidencePack(
                    digest=pack_digest(content),
                    tenant_id=t.id,
                    version_id=version_id,
                    content=content,
                    created_by="owner",
                ),
                RiskAssessment(
                    id=f"risk_{uuid.uuid4().hex[:12]}",
                    tenant_id=t.id,
                    version_id=version_id,
                    model_version="1.0",
                    inputs={},
                    factors=[],
                    score=score,
                    threshold=50.0,
                    requires_cab=score > 50,
                    created_by="owner",
                ),
            ]
        )
    return World(cp, t, dept, team, finance, pub, app_id, version_id)


def gates_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in body["gates"]}


async def test_canary_at_97_9_percent_fails_and_pauses(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=979, failed=21)
    body = (await w.pub.post(f"/api/v1/rollouts/{intent['rollout_id']}/evaluate")).ok()
    rate = gates_by_name(body)["install_success_rate"]
    assert (rate["verdict"], rate["measured"], rate["threshold"]) == ("failed", 0.979, 0.98)
    assert "97.90% of 1000 reported installs succeeded" in rate["reason"]
    assert body["status"] == "Paused" and body["intent_state"] == "paused"
    assert body["paused_reason"].startswith("gates failed: install_success_rate")
    assert all({"measured", "threshold", "verdict"} <= set(g) for g in body["gates"])
    (paused,) = await w.events("rollout_paused")
    assert paused["data"]["automatic"] is True and paused["actor"] == "pub"
    evaluated = await w.events("gate_evaluated")
    assert evaluated[0]["outcome"] == "failed"
    # The recorded gates are what the list shows.
    listed = (await w.pub.get("/api/v1/rollouts", params={"status": "Paused"})).ok()
    assert [r["id"] for r in listed["items"]] == [intent["rollout_id"]]
    assert listed["items"][0]["gates_live"] is False
    by_app = (await w.pub.get(f"/api/v1/apps/{w.app_id}/rollouts")).ok()
    assert [r["id"] for r in by_app["items"]] == [intent["rollout_id"]]
    assert (await w.pub.get("/api/v1/apps/app_nope/rollouts")).status == 404
    # Resumed while the gate still fails: running again, but Degraded.
    resumed = (await w.pub.post(f"/api/v1/rollouts/{intent['rollout_id']}/resume", {})).ok()
    assert (resumed["status"], resumed["intent_state"]) == ("Degraded", "active")


async def test_promoting_a_failing_canary_pauses_it_with_the_gates(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=979, failed=21)
    response = await w.pub.post(f"/api/v1/rollouts/{intent['rollout_id']}/promote", {})
    assert response.status == 409
    error = response.body["error"]
    assert error["message"].startswith("promotion refused and rollout paused")
    failed = [g for g in error["details"]["gates"] if g["verdict"] == "failed"]
    assert [g["name"] for g in failed] == ["install_success_rate"]
    assert error["details"]["rollout"]["status"] == "Paused"
    assert len(await w.events("rollout_paused")) == 1
    again = await w.pub.post(f"/api/v1/rollouts/{intent['rollout_id']}/promote", {})
    assert again.status == 409 and "resume it first" in again.body["error"]["message"]


async def test_too_few_reports_is_inconclusive(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=5, pending=30)
    rollout = f"/api/v1/rollouts/{intent['rollout_id']}"
    response = await w.pub.post(f"{rollout}/promote", {})
    assert response.status == 409
    assert "inconclusive: waiting for 15 more devices" in response.body["error"]["message"]
    assert response.body["error"]["details"]["waiting_for"] == 15
    body = (await w.pub.get(rollout)).ok()
    assert body["status"] == "Progressing" and body["ring"] == 1 and body["gates_live"] is True
    assert gates_by_name(body)["install_success_rate"]["verdict"] == "inconclusive"
    assert await w.events("rollout_paused") == []


async def test_overdue_installs_fail_time_to_compliance(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=40)
    await w.installs(intent["id"], 1, pending=2, assigned_at=utcnow() - timedelta(hours=25))
    body = (await w.pub.post(f"/api/v1/rollouts/{intent['rollout_id']}/evaluate")).ok()
    ttc = gates_by_name(body)["time_to_compliance"]
    assert (ttc["verdict"], ttc["measured"]) == ("failed", 2)
    assert ttc["detail"]["overdue"] == {"online": 2}
    assert body["status"] == "Paused"


async def test_target_outside_the_publishers_scope_is_refused(cp: ControlPlane) -> None:
    w = await world(cp)
    body = {"client_key": "k1", "version_id": w.version_id, "target_scope_id": w.finance}
    response = await w.pub.post("/api/v1/intents", body)
    assert response.status == 403
    error = response.body["error"]
    assert error["message"].startswith("cross-boundary targeting is denied by default")
    assert "outside your scope subtree" in error["message"]
    assert error["details"]["rule"] == "boundary:publisher"


async def test_target_outside_the_applications_scope_is_refused(cp: ControlPlane) -> None:
    w = await world(cp, allowed="team")
    response = await w.pub.post(
        "/api/v1/intents",
        {"client_key": "k1", "version_id": w.version_id, "target_scope_id": w.dept},
    )
    assert response.status == 403
    error = response.body["error"]
    assert "cross-boundary targeting is denied by default" in error["message"]
    assert "outside the application's allowed scopes" in error["message"]
    assert error["details"] == {"rule": "boundary:application", "allowed_scope_ids": [w.team]}
    assert (await w.intent(target_scope_id=w.team))["target_scope_id"] == w.team


async def test_mandatory_scope_declaration(cp: ControlPlane) -> None:
    w = await world(cp)
    response = await w.pub.post("/api/v1/intents", {"client_key": "k", "version_id": w.version_id})
    assert response.status == 422 and response.body["error"]["field"] == "target_scope_id"


async def test_one_active_change_per_application_and_ring(cp: ControlPlane) -> None:
    w = await world(cp)
    first = await w.intent()
    body = {"client_key": "second", "version_id": w.version_id, "target_scope_id": w.team}
    response = await w.pub.post("/api/v1/intents", body)
    assert response.status == 409
    assert (
        f"already has an active change: intent {first['id']}" in response.body["error"]["message"]
    )
    assert response.body["error"]["details"]["intent_id"] == first["id"]
    rollout = f"/api/v1/rollouts/{first['rollout_id']}"
    (await w.pub.post(f"{rollout}/pause", {"reason": "investigating"})).ok()
    assert (await w.pub.post("/api/v1/intents", body)).status == 409  # paused is in flight
    (await w.pub.post(f"{rollout}/rollback", {"reason": "bad build"})).ok()
    assert (await w.pub.post("/api/v1/intents", body)).ok(201)["ring"] == 0
    assert (await w.intent(ring=1))["ring"] == 1  # another ring is another change


async def test_promotion_into_a_busy_ring_is_refused(cp: ControlPlane) -> None:
    w = await world(cp)
    canary = await w.intent(ring=1)
    lab = await w.intent(ring=0)
    await w.installs(lab["id"], 0, succeeded=1)
    response = await w.pub.post(f"/api/v1/rollouts/{lab['rollout_id']}/promote", {})
    assert response.status == 409
    assert f"intent {canary['id']}" in response.body["error"]["message"]
    body = (await w.pub.get(f"/api/v1/rollouts/{lab['rollout_id']}")).ok()
    assert body["ring"] == 0 and body["status"] != "Paused"


async def test_replayed_intent_changes_nothing(cp: ControlPlane) -> None:
    w = await world(cp)
    body = {
        "client_key": "chrome-131-lab",
        "version_id": w.version_id,
        "target_scope_id": w.dept,
        "schedule": {"start_at": "2026-01-01T01:00:00+01:00"},
        "notes": "lab first",
    }
    first = (await w.pub.post("/api/v1/intents", body)).ok(201)
    replay = (await w.pub.post("/api/v1/intents", body)).ok(200)
    assert replay == first
    assert first["schedule"]["start_at"] == "2026-01-01T00:00:00Z"  # stored in UTC
    assert len(await w.events("intent_created")) == 1
    changed = await w.pub.post("/api/v1/intents", {**body, "notes": "something else"})
    assert changed.status == 409
    assert changed.body["error"]["details"] == {"intent_id": first["id"]}
    got = (await w.pub.get(f"/api/v1/intents/{first['id']}")).ok()
    assert got["request_digest"] == first["request_digest"] and got["notes"] == "lab first"


@pytest.mark.parametrize(("score", "needs_cab"), [(51.0, True), (50.0, False)])
async def test_promotion_into_pilot_needs_cab_above_the_threshold(
    cp: ControlPlane, score: float, needs_cab: bool
) -> None:
    w = await world(cp, score=score)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=20)
    promote = f"/api/v1/rollouts/{intent['rollout_id']}/promote"
    response = await w.pub.post(promote, {"from_ring": 1})
    if not needs_cab:
        body = response.ok()
        assert (body["ring"], body["status"]) == (2, "Progressing")
        assert gates_by_name(body)["cab_approval"]["measured"] == "not_required"
        assert "at or below the CAB threshold 50" in gates_by_name(body)["cab_approval"]["reason"]
        return
    assert response.status == 409
    error = response.body["error"]
    assert "waiting for CAB approval" in error["message"]
    assert "risk score 51 is above the CAB threshold 50" in error["message"]
    approval_id = error["details"]["approval_id"]
    assert approval_id is not None
    assert error["details"]["rollout"]["status"] == "Healthy"  # waiting, not paused
    # Asking again finds the open request instead of filing another.
    again = (await w.pub.post(promote, {})).body["error"]["details"]["approval_id"]
    assert again == approval_id
    assert len(await w.events("approval_requested")) == 1
    cab = await w.t.principal("ana", ["cab_approver"], w.t.root)
    decided = await cab.post(f"/api/v1/approvals/{approval_id}/decision", {"decision": "approve"})
    decided.ok()
    body = (await w.pub.post(promote, {"from_ring": 1})).ok()
    assert body["ring"] == 2
    assert gates_by_name(body)["cab_approval"]["detail"]["approval_id"] == approval_id
    (promoted,) = await w.events("rollout_promoted")
    assert (promoted["data"]["from_ring"], promoted["data"]["to_ring"]) == (1, 2)
    stale = await w.pub.post(promote, {"from_ring": 1})  # a retried promote moves nothing
    assert stale.status == 409 and stale.body["error"]["field"] == "from_ring"


async def test_open_incident_blocks_promotion(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=20)
    ops = await w.t.principal("ops", ["endpoint_ops"], w.dept)
    incident = (
        await ops.post("/api/v1/incidents", {"application_id": w.app_id, "title": "crash loop"})
    ).ok(201)
    rollout = f"/api/v1/rollouts/{intent['rollout_id']}"
    response = await w.pub.post(f"{rollout}/promote", {})
    assert response.status == 409
    gate = gates_by_name(response.body["error"]["details"])["no_open_incident"]
    assert (gate["verdict"], gate["measured"]) == ("failed", 1)
    assert (await w.pub.get(rollout)).ok()["status"] == "Paused"
    closed = (await ops.post(f"/api/v1/incidents/{incident['id']}/close")).ok()
    assert closed["state"] == "closed" and closed["closed_at"] is not None
    assert (await ops.post(f"/api/v1/incidents/{incident['id']}/close")).ok() == closed
    assert len(await w.events("incident_changed")) == 2
    listed = (await ops.get("/api/v1/incidents", params={"application_id": w.app_id})).ok()
    assert [i["id"] for i in listed["items"]] == [incident["id"]]
    assert (await ops.get("/api/v1/incidents", params={"state": "open"})).ok()["items"] == []
    other = await cp.tenant()
    assert (await other.owner.get(f"/api/v1/incidents/{incident['id']}")).status == 404
    foreign = {"application_id": w.app_id, "title": "not yours"}
    assert (await other.owner.post("/api/v1/incidents", foreign)).status == 404
    assert (await w.pub.post(f"{rollout}/resume", {})).ok()["status"] == "Healthy"
    assert (await w.pub.post(f"{rollout}/promote", {})).ok()["ring"] == 2


async def test_pause_resume_rollback(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=1)
    await w.installs(intent["id"], 1, succeeded=15, failed=0, pending=10)
    rollout = f"/api/v1/rollouts/{intent['rollout_id']}"
    paused = (await w.pub.post(f"{rollout}/pause", {"reason": "investigating"})).ok()
    assert (paused["status"], paused["paused_reason"]) == ("Paused", "investigating")
    assert (await w.pub.post(f"{rollout}/pause", {"reason": "again"})).ok() == paused
    assert len(await w.events("rollout_paused")) == 1
    resumed = (await w.pub.post(f"{rollout}/resume", {"reason": "false alarm"})).ok()
    assert (resumed["status"], resumed["intent_state"]) == ("Progressing", "active")
    assert resumed["paused_reason"] is None
    assert [h["action"] for h in resumed["history"]] == ["create", "pause", "resume"]
    assert (await w.pub.post(f"{rollout}/resume", {})).ok()["status"] == "Progressing"
    assert len(await w.events("rollout_resumed")) == 1
    rolled = (await w.pub.post(f"{rollout}/rollback", {"reason": "bad build"})).ok()
    assert (rolled["status"], rolled["intent_state"]) == ("Degraded", "rolled_back")
    async with cp.state.sessions() as session:
        statuses = dict(
            (
                await session.execute(
                    select(DeviceInstall.status, func.count())
                    .where(DeviceInstall.intent_id == intent["id"])
                    .group_by(DeviceInstall.status)
                )
            ).all()
        )
    assert statuses == {"rolled_back": 25}
    (event,) = await w.events("rollout_rolled_back")
    assert (event["data"]["installs"], event["data"]["reason"]) == (25, "bad build")
    assert (await w.pub.post(f"{rollout}/rollback", {"reason": "x"})).ok() == rolled
    for verb, body in (("promote", {}), ("pause", {"reason": "x"}), ("resume", {})):
        response = await w.pub.post(f"{rollout}/{verb}", body)
        assert response.status == 409, verb
        assert "the intent is rolled_back, not in flight" in response.body["error"]["message"]


async def test_leaving_the_lab_needs_evidence_and_does_not_pause(cp: ControlPlane) -> None:
    w = await world(cp, evidence=False, state="staged")
    intent = await w.intent(ring=0)
    await w.installs(intent["id"], 0, succeeded=1)
    response = await w.pub.post(f"/api/v1/rollouts/{intent['rollout_id']}/promote", {})
    assert response.status == 409
    error = response.body["error"]
    failed = {g["name"] for g in error["details"]["gates"] if g["verdict"] == "failed"}
    assert failed == {"rollback_validated", "version_state", "evidence_pack"}
    assert "missing artifact_hashes, signatures" in error["message"]
    assert error["details"]["rollout"]["status"] == "Healthy"
    refused = await w.pub.post(
        "/api/v1/intents",
        {"client_key": "canary", "version_id": w.version_id, "target_scope_id": w.dept, "ring": 1},
    )
    assert refused.status == 409
    assert refused.body["error"]["message"].startswith("cannot start in ring 1 (canary)")


async def test_leaving_ring_4_completes_the_intent(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent(ring=3)
    await w.installs(intent["id"], 3, succeeded=100)
    promote = f"/api/v1/rollouts/{intent['rollout_id']}/promote"
    assert (await w.pub.post(promote, {})).ok()["ring"] == 4
    await w.installs(intent["id"], 4, succeeded=100)
    done = (await w.pub.post(promote, {})).ok()
    assert (done["ring"], done["status"], done["intent_state"]) == (4, "Healthy", "completed")
    assert (await w.pub.post(promote, {})).status == 409
    outcomes = [e["outcome"] for e in await w.events("rollout_promoted")]
    assert sorted(outcomes) == ["completed", "success"]


async def test_confinement_roles_and_acting_principal(cp: ControlPlane) -> None:
    w = await world(cp)
    intent = await w.intent()
    rollout = f"/api/v1/rollouts/{intent['rollout_id']}"
    other = await cp.tenant()
    assert (await other.owner.get(rollout)).status == 404
    assert (await other.owner.get(f"/api/v1/intents/{intent['id']}")).status == 404
    assert (await other.owner.post(f"{rollout}/pause", {"reason": "x"})).status == 404
    viewer = await w.t.principal("viewer", ["viewer"], w.t.root)
    assert (await viewer.get(rollout)).status == 200
    assert (await viewer.post(f"{rollout}/pause", {"reason": "x"})).status == 403
    outsider = await w.t.principal("fin-ops", ["endpoint_ops"], w.finance)
    assert (await outsider.get(rollout)).status == 403
    assert (await outsider.get("/api/v1/rollouts")).ok()["items"] == []
    team_ops = await w.t.principal("team-ops", ["endpoint_ops"], w.team)
    assert (await team_ops.get(rollout)).status == 200  # their devices are in its reach
    assert (await team_ops.post(f"{rollout}/pause", {"reason": "x"})).status == 403
    gateway = await w.t.principal("gw", ["viewer"], w.t.root, may_act_for_others=True)
    as_pub = gateway.as_(gateway.token, **{"X-Act-As": "pub"})
    (await as_pub.post(f"{rollout}/pause", {"reason": "asked in Teams"})).ok()
    (event,) = await w.events("rollout_paused")
    assert event["actor"] == "pub (via gw)"
    history = (await w.pub.get(rollout)).ok()["history"]
    assert history[-1]["actor"] == "pub (via gw)"


async def test_concurrent_requests_keep_one_change_and_one_intent(cp: ControlPlane) -> None:
    w = await world(cp)
    body = {"client_key": "same", "version_id": w.version_id, "target_scope_id": w.dept}
    replays = await asyncio.gather(*(w.pub.post("/api/v1/intents", body) for _ in range(4)))
    assert sorted(r.status for r in replays) == [200, 200, 200, 201]
    assert len({r.body["id"] for r in replays}) == 1
    rivals = await asyncio.gather(
        *(
            w.pub.post("/api/v1/intents", {**body, "client_key": f"rival-{n}", "ring": 1})
            for n in range(4)
        )
    )
    assert sorted(r.status for r in rivals) == [201, 409, 409, 409]
    assert len(await w.events("intent_created")) == 2
