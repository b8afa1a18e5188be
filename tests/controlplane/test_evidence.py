"""Evidence packs and risk exceptions through the HTTP API, plus the sweep and pending helpers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from controlplane.catalog import flag_expiring_exceptions, pending_exceptions_for
from controlplane.evidence import evidence_status
from controlplane.models import utcnow
from controlplane.release import EVIDENCE_PARTS
from controlplane.signing import digest
from tests.controlplane.client import ControlPlane
from tests.controlplane.test_catalog import (
    COMPLETE,
    approved_version,
    artifact,
    decide,
    events,
    move,
    new_app,
    new_version,
    request_exception,
)


async def test_packs_are_content_addressed_and_immutable(cp: ControlPlane) -> None:
    t = await cp.tenant()
    app = await new_app(t.owner, [t.root])
    vid = (await new_version(t.owner, app["id"]))["id"]
    path = f"/api/v1/versions/{vid}/evidence"
    partial = {"sbom": {"format": "spdx", "ref": "s3://x"}, "scan_report": {"critical": 0}}
    first = (await t.owner.post(path, {"parts": partial})).ok(201)
    assert first["digest"] == digest(first["content"]) and first["verified"]
    assert first["content"]["parts"] == partial and first["content"]["version_id"] == vid
    assert "artifact_hashes" in first["missing"] and "sbom" not in first["missing"]

    # The same content, keys in another order, is the same pack: found, not stored again.
    reordered = {"scan_report": {"critical": 0}, "sbom": {"ref": "s3://x", "format": "spdx"}}
    same = await t.owner.post(path, {"parts": reordered})
    assert same.status == 200 and same.body["digest"] == first["digest"]
    second = (await t.owner.post(path, {"parts": COMPLETE})).ok(201)
    assert second["digest"] != first["digest"] and second["missing"] == []

    stored = (await t.owner.get(f"/api/v1/evidence/{first['digest']}")).ok()
    assert stored["content"] == first["content"] and stored["verified"]
    newest = (await t.owner.get(path)).ok()
    assert newest["pack"]["digest"] == second["digest"] and newest["missing"] == []
    assert [e["data"]["digest"] for e in await events(t.owner, "evidence_stored")] == [
        first["digest"],
        second["digest"],
    ]
    # The same parts for another version are another pack: the version is part of the content.
    other = (await new_version(t.owner, app["id"], "129.0.0"))["id"]
    elsewhere = (await t.owner.post(f"/api/v1/versions/{other}/evidence", {"parts": COMPLETE})).ok(
        201
    )
    assert elsewhere["digest"] != second["digest"]


async def test_publishing_waits_for_a_complete_pack(cp: ControlPlane) -> None:
    t = await cp.tenant()
    app = await new_app(t.owner, [t.root])
    vid = (await new_version(t.owner, app["id"]))["id"]
    (await t.owner.post(f"/api/v1/versions/{vid}/artifacts", artifact())).ok(201)
    await move(t.owner, vid, "packaged", "staged", "approved")

    none = await t.owner.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert none.status == 409
    assert none.body["error"]["details"]["missing_evidence"] == list(EVIDENCE_PARTS)
    assert "no evidence pack is missing artifact_hashes" in none.body["error"]["message"]

    parts = {k: v for k, v in COMPLETE.items() if k not in ("sbom", "rollback_plan")}
    parts["test_evidence"] = {}  # present but empty counts as missing
    (await t.owner.post(f"/api/v1/versions/{vid}/evidence", {"parts": parts})).ok(201)
    refused = await t.owner.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert refused.status == 409
    error = refused.body["error"]
    assert error["details"]["missing_evidence"] == ["sbom", "rollback_plan", "test_evidence"]
    assert "is missing sbom, rollback_plan, test_evidence" in error["message"]
    assert error["details"]["gate"]["ok"] is True

    async with cp.state.sessions() as session:
        pack, missing = await evidence_status(session, t.id, vid)
    assert pack == error["details"]["evidence_digest"] and missing == [
        "sbom",
        "rollback_plan",
        "test_evidence",
    ]
    (await t.owner.post(f"/api/v1/versions/{vid}/evidence", {"parts": COMPLETE})).ok(201)
    assert (await move(t.owner, vid, "published"))["state"] == "published"


async def test_evidence_content_is_guarded(cp: ControlPlane) -> None:
    t = await cp.tenant()
    vid = await approved_version(t)
    path = f"/api/v1/versions/{vid}/evidence"
    deep: dict[str, Any] = {"x": 1}
    for _ in range(40):
        deep = {"x": deep}
    for parts, field in (
        ({"sbom": {"note": "a\x00b"}}, "parts.sbom.note"),
        ({"sbom": deep}, None),
        ({"sbom": {"n": 2**60}}, None),
        ({"SBOM": {"a": 1}}, None),
        ({"sbom": ["not", "an", "object"]}, None),
        ({}, None),
    ):
        refused = await t.owner.post(path, {"parts": parts})
        assert refused.status == 422, (parts, refused.body)
        if field is not None:
            assert refused.body["error"]["field"] == field
    assert (await t.owner.get(path)).ok()["pack"]["content"]["parts"] == COMPLETE


async def test_exception_requests_are_validated(cp: ControlPlane) -> None:
    t = await cp.tenant()
    vid = await approved_version(t, "fail", critical=1)
    path = f"/api/v1/versions/{vid}/exceptions"
    good: dict[str, Any] = {
        "kind": "vulnerability",
        "reason": "no fix yet",
        "compensating_controls": ["ring 1 only"],
        "owner": "owner",
        "expires_at": (utcnow() + timedelta(days=10)).isoformat(),
    }
    for change, field in (
        ({"expires_at": (utcnow() - timedelta(minutes=1)).isoformat()}, "expires_at"),
        ({"expires_at": (utcnow() + timedelta(days=91)).isoformat()}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"owner": "nobody"}, "owner"),
        ({"compensating_controls": []}, "compensating_controls"),
        ({"compensating_controls": ["   "]}, "compensating_controls.0"),
        ({"reason": "  "}, "reason"),
        ({"kind": "license"}, "kind"),
    ):
        refused = await t.owner.post(path, {**good, **change})
        assert refused.status == 422, (change, refused.body)
        assert refused.body["error"]["field"] == field
    created = (await t.owner.post(path, good)).ok(201)
    assert created["state"] == "requested" and created["active"] is False
    assert [e["data"]["exception_id"] for e in await events(t.owner, "exception_requested")] == [
        created["id"]
    ]


async def test_separation_of_duties_on_exception_decisions(cp: ControlPlane) -> None:
    t = await cp.tenant()
    vid = await approved_version(t, "fail", high=1)
    both = await t.principal("rita", ["packaging_engineer", "security_reviewer"])
    reviewer = await t.principal("sam", ["security_reviewer"])
    cab = await t.principal("cora", ["cab_approver"])
    packager = await t.principal("pat", ["packaging_engineer"])
    exc = await request_exception(both, vid)

    own = await both.post(f"/api/v1/exceptions/{exc}/decision", {"decision": "approve"})
    assert own.status == 403 and "separation of duties" in own.body["error"]["message"]
    for outsider in (cab, packager):
        denied = await outsider.post(f"/api/v1/exceptions/{exc}/decision", {"decision": "approve"})
        assert denied.status == 403
        assert "exception.decide" in denied.body["error"]["message"]
    approved = await decide(reviewer, exc, "approve")
    assert approved["state"] == "approved" and approved["decided_by"] == "sam"
    assert approved["active"] is True
    twice = await reviewer.post(f"/api/v1/exceptions/{exc}/decision", {"decision": "deny"})
    assert twice.status == 409
    decided = await events(t.owner, "exception_decided")
    assert [(e["outcome"], e["actor"], e["data"]["comment"]) for e in decided] == [
        ("approved", "sam", "compensating controls reviewed")
    ]

    denied_one = await request_exception(packager, vid)
    assert (await decide(both, denied_one, "deny"))["state"] == "denied"
    listed = (await t.owner.get("/api/v1/exceptions", params={"state": "approved"})).ok()
    assert [e["id"] for e in listed["items"]] == [exc]
    by_version = (await t.owner.get("/api/v1/exceptions", params={"version_id": vid})).ok()
    assert {e["id"] for e in by_version["items"]} == {exc, denied_one}


async def test_pending_for_a_reviewer_and_the_expiry_sweep(cp: ControlPlane) -> None:
    t = await cp.tenant()
    vid = await approved_version(t, "fail", critical=2)
    both = await t.principal("rita", ["packaging_engineer", "security_reviewer"])
    reviewer = await t.principal("sam", ["security_reviewer"])
    mine = await request_exception(both, vid)
    theirs = await request_exception(t.owner, vid, days=60)
    soon = await request_exception(t.owner, vid, days=2)

    async with cp.state.sessions() as session:
        for_rita = await pending_exceptions_for(session, t.id, "rita", ("security_reviewer",))
        for_sam = await pending_exceptions_for(session, t.id, "sam", ("security_reviewer",))
        for_pat = await pending_exceptions_for(session, t.id, "pat", ("packaging_engineer",))
    assert [e.id for e in for_rita] == [theirs, soon]
    assert [e.id for e in for_sam] == [mine, theirs, soon]
    assert for_pat == []
    dept = await t.scope(t.root, "department", "finance")
    await t.principal("fay", ["security_reviewer"], dept)
    async with cp.state.sessions() as session:
        # The application may go tenant-wide: a department's reviewer cannot decide for it.
        assert await pending_exceptions_for(session, t.id, "fay", ("security_reviewer",)) == []

    await decide(reviewer, theirs, "approve")
    await decide(reviewer, soon, "approve")
    now = utcnow()
    async with cp.state.writing() as session:
        assert await flag_expiring_exceptions(session, t.id, now, timedelta(days=7)) == 1
    async with cp.state.writing() as session:
        assert await flag_expiring_exceptions(session, t.id, now, timedelta(days=7)) == 0
    async with cp.state.writing() as session:
        later = now + timedelta(days=61)
        assert await flag_expiring_exceptions(session, t.id, later, timedelta(days=7)) == 1
    flagged = await events(t.owner, "exception_expiring")
    assert [(e["data"]["exception_id"], e["outcome"]) for e in flagged] == [
        (soon, "expiring"),
        (theirs, "expired"),
    ]


async def test_other_tenants_evidence_and_exceptions_are_not_found(cp: ControlPlane) -> None:
    a, b = await cp.tenant(), await cp.tenant()
    vid = await approved_version(a, "fail", high=1)
    pack = (await a.owner.get(f"/api/v1/versions/{vid}/evidence")).ok()["pack"]["digest"]
    exc = await request_exception(a.owner, vid)
    reviewer = await b.principal("sam", ["security_reviewer"])
    assert (await b.owner.get(f"/api/v1/evidence/{pack}")).status == 404
    assert (await b.owner.get(f"/api/v1/versions/{vid}/evidence")).status == 404
    assert (
        await b.owner.post(f"/api/v1/versions/{vid}/evidence", {"parts": COMPLETE})
    ).status == 404
    assert (await b.owner.get(f"/api/v1/exceptions/{exc}")).status == 404
    decision = await reviewer.post(f"/api/v1/exceptions/{exc}/decision", {"decision": "approve"})
    assert decision.status == 404
    assert (await b.owner.get("/api/v1/exceptions")).ok()["items"] == []
    body = {
        "kind": "vulnerability",
        "reason": "x",
        "compensating_controls": ["y"],
        "owner": "owner",
        "expires_at": (utcnow() + timedelta(days=1)).isoformat(),
    }
    assert (await b.owner.post(f"/api/v1/versions/{vid}/exceptions", body)).status == 404
