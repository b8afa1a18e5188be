"""Risk assessments and CAB approvals through the HTTP API, with separation of duties."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from controlplane.cab import cab_approved, request_cab
from controlplane.models import utcnow
from controlplane.models_release import (
    Application,
    Approval,
    AppVersion,
    DeploymentIntent,
    RiskAssessment,
    RiskException,
)
from controlplane.risk import WEIGHTS
from tests.controlplane.client import Client, ControlPlane, Tenant

AGENT: dict[str, Any] = {
    "privilege_impact": "admin_required",
    "supply_chain_trust": "signed_unknown",
    "exploitability": "user_listener_or_scripting",
    "data_access": "wide_filesystem",
    "sbom_vulnerability": "high",
    "blast_radius": {"ring": 2, "target_devices": 500},
    "operational_complexity": "reboot_required",
    "history": "first_release",
    "justification": "new EDR agent, vendor not yet in our catalog",
}
"""Scores 63.5 (see test_risk.py)."""

LOW: dict[str, Any] = {
    **AGENT,
    "privilege_impact": "user_context",
    "sbom_vulnerability": "none",
    "data_access": 0.0,
}
"""Scores 30: 4 + 6 + 6 + 0 + 0 + 5 + 5 + 4."""


@dataclass
class Release:
    """An application, its version and a deployment intent, inserted straight into the DB."""

    application_id: str
    version_id: str
    intent_id: str


async def release(
    cp: ControlPlane,
    t: Tenant,
    *,
    intent_by: str = "pat",
    privileged: bool = False,
    scope: str | None = None,
) -> Release:
    tag = uuid.uuid4().hex[:8]
    ids = Release(f"app_{tag}", f"ver_{tag}", f"int_{tag}")
    async with cp.state.sessions.begin() as session:
        session.add(
            Application(
                id=ids.application_id,
                tenant_id=t.id,
                name=f"edr-{tag}",
                owner="owner",
                category="security",
                support_tier="gold",
                allowed_scope_ids=[t.root],
                privileged=privileged,
                created_by="owner",
            )
        )
        await session.flush()
        session.add(
            AppVersion(
                id=ids.version_id,
                tenant_id=t.id,
                application_id=ids.application_id,
                version="7.1.0",
                state="staged",
                supported_os=["macos"],
                dependencies=[],
                requested_by="packager",
            )
        )
        await session.flush()
        session.add(
            DeploymentIntent(
                id=ids.intent_id,
                tenant_id=t.id,
                client_key=tag,
                request_digest="0" * 64,
                application_id=ids.application_id,
                version_id=ids.version_id,
                target_scope_id=scope or t.root,
                ring=1,
                schedule={},
                constraints={},
                requested_by=intent_by,
            )
        )
    return ids


async def ask_cab(
    cp: ControlPlane, t: Tenant, r: Release, *, ring: int = 2, by: str = "carol"
) -> Approval:
    async with cp.state.writing() as session:
        return await request_cab(
            session,
            t.id,
            intent_id=r.intent_id,
            ring=ring,
            reason="risk score 63.5 is above the CAB threshold 50",
            requested_by=by,
            correlation_id="test-" + uuid.uuid4().hex,
        )


@dataclass
class Team:
    carol: Client
    """publisher and CAB approver: asks for CAB approval."""
    ana: Client
    li: Client
    """Two CAB approvers."""
    pat: Client
    """A publisher (wrote the intents)."""
    gw: Client
    """A gateway credential that may act for others."""


async def team(t: Tenant) -> Team:
    return Team(
        carol=await t.principal("carol", ["publisher", "cab_approver"]),
        ana=await t.principal("ana", ["cab_approver"]),
        li=await t.principal("li", ["cab_approver"]),
        pat=await t.principal("pat", ["publisher"]),
        gw=await t.principal("gw", ["viewer"], may_act_for_others=True),
    )


def acting(gw: Client, name: str) -> Client:
    return gw.as_(gw.token, **{"X-Act-As": name})


async def events(t: Tenant, type: str) -> list[dict[str, Any]]:
    body = (await t.owner.get("/api/v1/events", params={"type": type})).ok()
    return list(body["items"])


async def test_assessment_is_stored_with_model_version_and_explained(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    path = f"/api/v1/versions/{r.version_id}/risk"
    assert (await people.pat.get(path)).status == 404
    out = (await people.pat.post(path, AGENT)).ok(201)
    assert out["model_version"] == "1.0"
    assert out["score"] == 63.5
    assert out["threshold"] == 50.0
    assert out["requires_cab"] is True
    assert [f["name"] for f in out["factors"]] == list(WEIGHTS)
    assert all(f["explanation"] for f in out["factors"])
    assert out["inputs"]["justification"] == AGENT["justification"]
    assert [c["required"] for c in out["cab_by_ring"]] == [False, False, True, True, True]
    async with cp.state.sessions() as session:
        row = await session.get_one(RiskAssessment, out["id"])
        assert (row.model_version, row.score, row.requires_cab) == ("1.0", 63.5, True)
        assert row.inputs["blast_radius"] == {"ring": 2, "target_devices": 500}
        assert len(row.factors) == 8
    assert (await people.ana.get(path)).ok() == out
    # A newer assessment replaces it for GET.
    newer = (await people.pat.post(path, LOW)).ok(201)
    assert newer["score"] < 50 and newer["requires_cab"] is False
    assert (await people.ana.get(path)).ok()["id"] == newer["id"]
    logged = await events(t, "risk_assessed")
    assert [e["data"]["score"] for e in logged] == [63.5, newer["score"]]
    assert logged[0]["outcome"] == "requires_cab"


async def test_privileged_tooling_needs_cab_from_ring_1_whatever_the_score(
    cp: ControlPlane,
) -> None:
    t = await cp.tenant()
    r = await release(cp, t, privileged=True)
    out = (await t.owner.post(f"/api/v1/versions/{r.version_id}/risk", LOW)).ok(201)
    assert out["score"] < 50
    assert out["requires_cab"] is True and out["privileged"] is True
    assert [c["required"] for c in out["cab_by_ring"]] == [False, True, True, True, True]
    assert "privileged tooling" in out["cab_by_ring"][1]["reason"]


async def test_assessment_input_and_access_errors(cp: ControlPlane) -> None:
    t = await cp.tenant()
    other = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    path = f"/api/v1/versions/{r.version_id}/risk"
    bad = await people.pat.post(path, {**AGENT, "privilege_impact": "root"})
    assert bad.status == 422 and bad.body["error"]["field"].startswith("privilege_impact")
    assert (await people.pat.post(path, {**AGENT, "history": 1.2})).status == 422
    missing = {k: v for k, v in AGENT.items() if k != "history"}
    assert (await people.pat.post(path, missing)).status == 422
    assert (await people.pat.post(path, {**AGENT, "extra": 1})).status == 422
    # CAB approvers read risk but do not assess it.
    assert (await people.ana.post(path, AGENT)).status == 403
    # Assessing needs a principal whose subtree covers the application's scopes.
    finance = await t.scope(t.root, "department", "finance")
    narrow = await t.principal("nora", ["publisher"], finance)
    assert (await narrow.post(path, AGENT)).status == 403
    assert (await narrow.get(path)).status == 404  # nothing assessed yet, but readable
    # Another tenant's version is not found, either way.
    assert (await other.owner.post(path, AGENT)).status == 404
    assert (await other.owner.get(path)).status == 404
    assert (await people.pat.post("/api/v1/versions/ver_nope/risk", AGENT)).status == 404


async def test_request_cab_reuses_the_open_request_per_intent_and_ring(cp: ControlPlane) -> None:
    t = await cp.tenant()
    await team(t)
    r = await release(cp, t)
    first = await ask_cab(cp, t, r, by="carol (via gw)")
    again = await ask_cab(cp, t, r, by="pat")
    other_ring = await ask_cab(cp, t, r, ring=3)
    assert again.id == first.id and other_ring.id != first.id
    assert first.requested_by == "carol"
    assert (first.subject_type, first.subject_id, first.required_role, first.decision) == (
        "intent",
        r.intent_id,
        "cab_approver",
        "pending",
    )
    assert first.reason.startswith("ring 2 (pilot): ")
    logged = await events(t, "approval_requested")
    assert [(e["data"]["approval_id"], e["data"]["ring"]) for e in logged] == [
        (first.id, 2),
        (other_ring.id, 3),
    ]
    assert logged[0]["actor"] == "carol (via gw)"


async def test_pending_is_what_the_caller_may_decide(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    (await people.pat.post(f"/api/v1/versions/{r.version_id}/risk", AGENT)).ok(201)
    approval = await ask_cab(cp, t, r, by="carol")

    for approver in (people.ana, people.li, acting(people.gw, "ana")):
        body = (await approver.get("/api/v1/approvals/pending")).ok()
        (item,) = body["items"]
        assert item["kind"] == "cab_approval" and item["id"] == approval.id
        assert item["requested_by"] == "carol"
        assert item["ring"] == 2 and item["risk_score"] == 63.5
        assert "into ring 2 (pilot)" in item["summary"] and "7.1.0" in item["summary"]
        assert "above the CAB threshold" in item["reason"]
        assert item["decide"]["path"] == f"/api/v1/approvals/{approval.id}/decision"
        assert body["truncated"] is False
    ana_via_gw = (await acting(people.gw, "ana").get("/api/v1/approvals/pending")).ok()
    assert ana_via_gw["principal"] == "ana"
    # The requester (also a CAB approver), directly or through the gateway: nothing to decide.
    for requester in (people.carol, acting(people.gw, "carol")):
        assert (await requester.get("/api/v1/approvals/pending")).ok()["items"] == []
    # Without the CAB role (the intent's author, an owner): nothing to decide.
    assert (await people.pat.get("/api/v1/approvals/pending")).ok()["items"] == []
    assert (await t.owner.get("/api/v1/approvals/pending")).ok()["items"] == []
    # Once decided it leaves everyone's list.
    (
        await people.ana.post(f"/api/v1/approvals/{approval.id}/decision", {"decision": "approve"})
    ).ok()
    assert (await people.li.get("/api/v1/approvals/pending")).ok()["items"] == []


async def test_requester_cannot_approve_their_own_request(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    dave = await t.principal("dave", ["cab_approver"])
    r = await release(cp, t, intent_by="dave")
    approval = await ask_cab(cp, t, r, by="carol")
    path = f"/api/v1/approvals/{approval.id}/decision"
    for own in (people.carol, acting(people.gw, "carol")):
        for decision in ("approve", "deny"):
            refused = await own.post(path, {"decision": decision})
            assert refused.status == 403
            assert refused.body["error"]["message"] == "requester cannot approve their own request"
    # Whoever wrote the deployment intent is a requester too.
    refused = await dave.post(path, {"decision": "approve"})
    assert refused.status == 403
    assert refused.body["error"]["message"].startswith("requester cannot approve their own")
    assert (await dave.get("/api/v1/approvals/pending")).ok()["items"] == []
    assert await events(t, "approval_decided") == []
    out = (await people.ana.get(f"/api/v1/approvals/{approval.id}")).ok()
    assert out["decision"] == "pending"


async def test_deciding_needs_the_cab_role(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    security = await t.principal("sam", ["security_reviewer"])
    r = await release(cp, t)
    approval = await ask_cab(cp, t, r)
    path = f"/api/v1/approvals/{approval.id}/decision"
    # No approval.decide permission at all.
    for client in (people.pat, security, acting(people.gw, "pat")):
        assert (await client.post(path, {"decision": "approve"})).status == 403
    # The owner may decide approvals in general, but this one needs the cab_approver role.
    owner = await t.owner.post(path, {"decision": "approve"})
    assert owner.status == 403
    assert owner.body["error"]["message"] == "deciding this request needs the cab_approver role"


async def test_a_second_decision_is_a_conflict(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    approval = await ask_cab(cp, t, r)
    path = f"/api/v1/approvals/{approval.id}/decision"
    body = {"decision": "approve", "conditions": ["canary first"], "comment": "ok with EDR"}
    out = (await people.ana.post(path, body)).ok()
    assert (out["decision"], out["approver"], out["in_force"]) == ("approved", "ana", True)
    assert out["conditions"] == ["canary first"] and out["ring"] == 2
    for client, decision in ((people.li, "approve"), (people.ana, "deny")):
        again = await client.post(path, {"decision": decision})
        assert again.status == 409
        assert "already approved by ana" in again.body["error"]["message"]
    (logged,) = await events(t, "approval_decided")
    assert logged["outcome"] == "approved" and logged["data"]["ring"] == 2
    assert logged["data"]["conditions"] == ["canary first"]

    # Two approvers at once: exactly one wins.
    other = await ask_cab(cp, t, r, ring=3)
    race = f"/api/v1/approvals/{other.id}/decision"
    results = await asyncio.gather(
        people.ana.post(race, {"decision": "approve"}),
        people.li.post(race, {"decision": "deny"}),
    )
    assert sorted(x.status for x in results) == [200, 409]


async def test_approvals_expire(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    approval = await ask_cab(cp, t, r)
    path = f"/api/v1/approvals/{approval.id}/decision"
    now = utcnow()
    too_late = (now + timedelta(days=31)).isoformat()
    assert (
        await people.ana.post(path, {"decision": "approve", "expires_at": too_late})
    ).status == 422
    past = (now - timedelta(minutes=1)).isoformat()
    assert (await people.ana.post(path, {"decision": "approve", "expires_at": past})).status == 422
    soon = (now + timedelta(days=1)).isoformat()
    assert (await people.ana.post(path, {"decision": "deny", "expires_at": soon})).status == 422
    naive = (now + timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert (await people.ana.post(path, {"decision": "approve", "expires_at": naive})).status == 422
    out = (await people.ana.post(path, {"decision": "approve", "expires_at": soon})).ok()
    assert out["in_force"] is True
    async with cp.state.sessions() as session:
        found = await cab_approved(session, t.id, intent_id=r.intent_id, ring=2, now=utcnow())
        assert found is not None and found.id == approval.id
        later = utcnow() + timedelta(days=2)
        assert await cab_approved(session, t.id, intent_id=r.intent_id, ring=2, now=later) is None
        assert await cab_approved(session, t.id, intent_id=r.intent_id, ring=3, now=now) is None
        assert (
            await cab_approved(session, "ten_other", intent_id=r.intent_id, ring=2, now=now) is None
        )
    # While in force, asking again returns it; once lapsed, a new request is opened.
    assert (await ask_cab(cp, t, r)).id == approval.id
    async with cp.state.sessions.begin() as session:
        await session.execute(
            update(Approval)
            .where(Approval.id == approval.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    listed = (await people.li.get(f"/api/v1/approvals/{approval.id}")).ok()
    assert (listed["decision"], listed["in_force"]) == ("approved", False)
    renewed = await ask_cab(cp, t, r)
    assert renewed.id != approval.id and renewed.decision == "pending"

    # The default: 14 days.
    default = (
        await people.li.post(f"/api/v1/approvals/{renewed.id}/decision", {"decision": "approve"})
    ).ok()
    assert default["expires_at"] is not None
    async with cp.state.sessions() as session:
        row = await session.get_one(Approval, renewed.id)
        assert row.expires_at is not None
        assert timedelta(days=13, hours=23) < row.expires_at - utcnow() <= timedelta(days=14)


async def test_a_lapsed_request_cannot_be_approved(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    approval = await ask_cab(cp, t, r)
    async with cp.state.sessions.begin() as session:
        await session.execute(
            update(Approval)
            .where(Approval.id == approval.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await people.ana.get("/api/v1/approvals/pending")).ok()["items"] == []
    late = await people.ana.post(
        f"/api/v1/approvals/{approval.id}/decision", {"decision": "approve"}
    )
    assert late.status == 409 and "expired" in late.body["error"]["message"]
    out = (await people.ana.get(f"/api/v1/approvals/{approval.id}")).ok()
    assert out["decision"] == "expired"
    (logged,) = await events(t, "approval_decided")
    assert logged["outcome"] == "expired"
    async with cp.state.sessions() as session:
        assert (
            await cab_approved(session, t.id, intent_id=r.intent_id, ring=2, now=utcnow()) is None
        )
    assert (await ask_cab(cp, t, r)).id != approval.id


async def test_gateway_acting_principal_decides_and_is_recorded(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    r = await release(cp, t)
    approval = await ask_cab(cp, t, r)
    out = (
        await acting(people.gw, "ana").post(
            f"/api/v1/approvals/{approval.id}/decision",
            {"decision": "deny", "comment": "no rollback plan"},
        )
    ).ok()
    assert (out["decision"], out["approver"], out["expires_at"]) == ("denied", "ana", None)
    (logged,) = await events(t, "approval_decided")
    assert logged["actor"] == "ana (via gw)" and logged["outcome"] == "denied"
    # A denied request does not count, and asking again opens a new one.
    async with cp.state.sessions() as session:
        assert (
            await cab_approved(session, t.id, intent_id=r.intent_id, ring=2, now=utcnow()) is None
        )
    assert (await ask_cab(cp, t, r)).id != approval.id


async def test_list_filters_pages_and_stays_in_tenant_and_scope(cp: ControlPlane) -> None:
    t = await cp.tenant()
    other = await cp.tenant()
    people = await team(t)
    finance = await t.scope(t.root, "department", "finance")
    eng = await t.scope(t.root, "department", "engineering")
    fin_cab = await t.principal("fin", ["cab_approver"], finance)
    mine = await release(cp, t, scope=finance)
    theirs = await release(cp, t, scope=eng)
    a1 = await ask_cab(cp, t, mine, ring=2)
    a2 = await ask_cab(cp, t, mine, ring=3)
    a3 = await ask_cab(cp, t, theirs, ring=2)
    (await people.ana.post(f"/api/v1/approvals/{a1.id}/decision", {"decision": "approve"})).ok()

    everything = (await people.ana.get("/api/v1/approvals")).ok()
    assert [a["id"] for a in everything["items"]] == [a3.id, a2.id, a1.id]
    pending = (await people.ana.get("/api/v1/approvals", params={"decision": "pending"})).ok()
    assert {a["id"] for a in pending["items"]} == {a2.id, a3.id}
    approved = (await people.ana.get("/api/v1/approvals", params={"decision": "approved"})).ok()
    assert [a["id"] for a in approved["items"]] == [a1.id]
    exceptions = await people.ana.get("/api/v1/approvals", params={"subject_type": "exception"})
    assert exceptions.ok()["items"] == []

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = (await people.ana.get("/api/v1/approvals", params=params)).ok()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [a3.id, a2.id, a1.id]
    assert (await people.ana.get("/api/v1/approvals", params={"cursor": "junk"})).status == 400

    # A CAB approver scoped to finance sees and decides finance only.
    scoped = (await fin_cab.get("/api/v1/approvals")).ok()
    assert {a["id"] for a in scoped["items"]} == {a1.id, a2.id}
    assert [i["id"] for i in (await fin_cab.get("/api/v1/approvals/pending")).ok()["items"]] == [
        a2.id
    ]
    outside = await fin_cab.post(f"/api/v1/approvals/{a3.id}/decision", {"decision": "approve"})
    assert outside.status == 403
    assert (await fin_cab.get(f"/api/v1/approvals/{a3.id}")).status == 404

    # Another tenant sees none of it.
    assert (await other.owner.get("/api/v1/approvals")).ok()["items"] == []
    assert (await other.owner.get(f"/api/v1/approvals/{a2.id}")).status == 404
    intruder = await other.principal("eve", ["cab_approver"])
    assert (
        await intruder.post(f"/api/v1/approvals/{a2.id}/decision", {"decision": "approve"})
    ).status == 404
    assert (await intruder.get("/api/v1/approvals/pending")).ok()["items"] == []
    async with cp.state.sessions() as session:
        rows = (await session.execute(select(Approval).where(Approval.id == a2.id))).scalars()
        assert [row.decision for row in rows] == ["pending"]


async def test_pending_includes_the_exceptions_the_caller_may_decide(cp: ControlPlane) -> None:
    t = await cp.tenant()
    people = await team(t)
    sam = await t.principal("sam", ["security_reviewer"])
    r = await release(cp, t)
    (await people.pat.post(f"/api/v1/versions/{r.version_id}/risk", AGENT)).ok(201)
    async with cp.state.sessions.begin() as session:
        session.add(
            RiskException(
                id="exc_" + uuid.uuid4().hex[:20],
                tenant_id=t.id,
                version_id=r.version_id,
                kind="scan_failed",
                reason="critical CVE in a bundled library, fix due next sprint",
                compensating_controls=["ring 1 only", "EDR watch list"],
                owner="pat",
                expires_at=utcnow() + timedelta(days=7),
                requested_by="pat",
            )
        )
    body = (await sam.get("/api/v1/approvals/pending")).ok()
    (item,) = body["items"]
    assert item["kind"] == "exception" and item["requested_by"] == "pat"
    assert item["risk_score"] == 63.5 and item["version_id"] == r.version_id
    assert "scan_failed" in item["summary"] and "7.1.0" in item["summary"]
    assert item["decide"]["path"] == f"/api/v1/exceptions/{item['id']}/decision"
    # The requester and CAB approvers have no exception to decide.
    assert (await people.pat.get("/api/v1/approvals/pending")).ok()["items"] == []
    assert (await people.ana.get("/api/v1/approvals/pending")).ok()["items"] == []
