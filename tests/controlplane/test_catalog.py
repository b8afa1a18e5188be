"""Catalog through the HTTP API: lifecycle, duties per transition, artifacts, the publish gate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from controlplane.catalog import supply_chain_gate
from controlplane.models import utcnow
from controlplane.models_release import RiskException
from controlplane.release import EVIDENCE_PARTS
from tests.controlplane.client import Client, ControlPlane, Tenant

SHA = "ab" * 32
COMPLETE: dict[str, Any] = {part: {"ref": f"s3://evidence/{part}"} for part in EVIDENCE_PARTS}


async def new_app(client: Client, scopes: list[str], name: str = "firefox") -> dict[str, Any]:
    body = {
        "name": name,
        "owner": "owner",
        "category": "browser",
        "support_tier": "tier1",
        "allowed_scope_ids": scopes,
        "description": "Mozilla Firefox ESR",
    }
    return (await client.post("/api/v1/apps", body)).ok(201)  # type: ignore[no-any-return]


async def new_version(client: Client, app_id: str, version: str = "128.5.0") -> dict[str, Any]:
    body = {
        "version": version,
        "supported_os": ["windows-11", "macos-14"],
        "dependencies": [{"name": "vcredist", "versions": ">=14.38"}],
        "release_notes": "Security fixes.",
    }
    return (await client.post(f"/api/v1/apps/{app_id}/versions", body)).ok(201)  # type: ignore[no-any-return]


def artifact(scan: str = "pass", *, sha: str = SHA, **findings: int) -> dict[str, Any]:
    return {
        "platform": "windows",
        "sha256": sha,
        "signing": {"signer": "CN=Example Corp", "thumbprint": "AB:CD:EF:01", "valid": True},
        "sbom_ref": "s3://sbom/firefox-128.5.0.spdx.json",
        "scan_result": scan,
        "findings": findings,
    }


async def move(client: Client, version_id: str, *states: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for state in states:
        body = (await client.post(f"/api/v1/versions/{version_id}/transition", {"to": state})).ok()
    return body


async def approved_version(
    t: Tenant, scan: str = "pass", *, critical: int = 0, high: int = 0
) -> str:
    """An approved version with one artifact and a complete evidence pack, as the owner."""
    app = await new_app(t.owner, [t.root])
    version = await new_version(t.owner, app["id"])
    (
        await t.owner.post(
            f"/api/v1/versions/{version['id']}/artifacts",
            artifact(scan, critical=critical, high=high),
        )
    ).ok(201)
    (await t.owner.post(f"/api/v1/versions/{version['id']}/evidence", {"parts": COMPLETE})).ok(201)
    await move(t.owner, version["id"], "packaged", "staged", "approved")
    return str(version["id"])


async def events(client: Client, type: str) -> list[dict[str, Any]]:
    body = (await client.get("/api/v1/events", params={"type": type})).ok()
    return body["items"]  # type: ignore[no-any-return]


async def test_lifecycle_walk_and_illegal_transition(cp: ControlPlane) -> None:
    t = await cp.tenant()
    app = await new_app(t.owner, [t.root])
    assert (await t.owner.get(f"/api/v1/apps/{app['id']}")).ok()["name"] == "firefox"
    version = await new_version(t.owner, app["id"])
    vid = version["id"]
    assert version["state"] == "requested"
    assert version["allowed_transitions"] == ["packaged", "retired"]

    illegal = await t.owner.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert illegal.status == 409
    assert illegal.body["error"]["details"]["allowed"] == ["packaged", "retired"]
    assert "packaged, retired" in illegal.body["error"]["message"]

    (await t.owner.post(f"/api/v1/versions/{vid}/artifacts", artifact())).ok(201)
    (await t.owner.post(f"/api/v1/versions/{vid}/evidence", {"parts": COMPLETE})).ok(201)
    await move(t.owner, vid, "packaged", "staged", "packaged", "staged", "approved")
    late = await t.owner.post(f"/api/v1/versions/{vid}/artifacts", artifact(sha="cd" * 32))
    assert late.status == 409  # what was approved is what ships
    published = await move(t.owner, vid, "published")
    assert published["state"] == "published" and published["allowed_transitions"] == ["retired"]
    back = await t.owner.post(f"/api/v1/versions/{vid}/transition", {"to": "staged"})
    assert back.status == 409 and back.body["error"]["details"]["allowed"] == ["retired"]
    await move(t.owner, vid, "retired")
    final = await t.owner.post(f"/api/v1/versions/{vid}/transition", {"to": "requested"})
    assert final.status == 409 and final.body["error"]["details"]["allowed"] == []

    listed = (await t.owner.get(f"/api/v1/apps/{app['id']}/versions")).ok()
    assert [(v["version"], v["state"]) for v in listed["items"]] == [("128.5.0", "retired")]
    changes = await events(t.owner, "catalog_changed")
    moves = [e["data"]["to"] for e in changes if e["action"] == "version.transition"]
    assert moves == ["packaged", "staged", "packaged", "staged", "approved", "published", "retired"]
    assert [e["data"]["sha256"] for e in await events(t.owner, "artifact_registered")] == [SHA]


async def test_catalog_input_is_validated(cp: ControlPlane) -> None:
    t = await cp.tenant()
    app = await new_app(t.owner, [t.root])
    assert (await t.owner.post("/api/v1/apps", {**_app_body(t.root)})).status == 409
    bad = await t.owner.post(
        f"/api/v1/apps/{app['id']}/versions", {"version": "1.2", "supported_os": ["linux"]}
    )
    assert bad.status == 422 and bad.body["error"]["field"] == "version"
    for text in ("1.2.3\n", "01.2.3", "1.2.3-", "v1.2.3"):
        refused = await t.owner.post(
            f"/api/v1/apps/{app['id']}/versions", {"version": text, "supported_os": ["x"]}
        )
        assert refused.status == 422, text
    await new_version(t.owner, app["id"], "2.0.0-rc.1+build.5")
    again = await t.owner.post(
        f"/api/v1/apps/{app['id']}/versions",
        {"version": "2.0.0-rc.1+build.5", "supported_os": ["x"]},
    )
    assert again.status == 409
    unknown = await t.owner.post("/api/v1/apps", _app_body("scp_nope", name="other"))
    assert unknown.status == 404
    extra = await t.owner.post("/api/v1/apps", {**_app_body(t.root, name="x"), "color": "red"})
    assert extra.status == 422 and "color" in extra.body["error"]["message"]
    version = await new_version(t.owner, app["id"], "3.0.0")
    short = await t.owner.post(f"/api/v1/versions/{version['id']}/artifacts", artifact(sha="abc"))
    assert short.status == 422 and short.body["error"]["field"] == "sha256"


def _app_body(scope: str, name: str = "firefox") -> dict[str, Any]:
    return {
        "name": name,
        "owner": "owner",
        "category": "browser",
        "support_tier": "tier1",
        "allowed_scope_ids": [scope],
    }


async def test_critical_or_high_findings_can_never_pass(cp: ControlPlane) -> None:
    t = await cp.tenant()
    app = await new_app(t.owner, [t.root])
    vid = (await new_version(t.owner, app["id"]))["id"]
    path = f"/api/v1/versions/{vid}/artifacts"
    for critical, high in ((1, 0), (0, 2), (1, 1)):
        refused = await t.owner.post(path, artifact("pass", critical=critical, high=high, low=9))
        assert refused.status == 422 and refused.body["error"]["field"] == "scan_result"
    (await t.owner.post(path, artifact("fail", critical=1))).ok(201)
    (await t.owner.post(path, artifact("pass", sha="cd" * 32, medium=3, low=7))).ok(201)
    detail = (await t.owner.get(f"/api/v1/versions/{vid}")).ok()
    assert detail["supply_chain_gate"]["ok"] is False
    assert "1 of 2 artifact scans did not pass" in detail["supply_chain_gate"]["reason"]
    # A rescan of the same binary replaces the failed record.
    (await t.owner.post(path, artifact("pass"))).ok(201)
    assert (await t.owner.get(f"/api/v1/versions/{vid}")).ok()["supply_chain_gate"]["ok"] is True
    assert len((await t.owner.get(path)).ok()["items"]) == 3


async def test_publish_needs_a_passing_scan_or_a_live_exception(cp: ControlPlane) -> None:
    t = await cp.tenant()
    packager = await t.principal("pat", ["packaging_engineer"])
    cab = await t.principal("cora", ["cab_approver"])
    publisher = await t.principal("paul", ["publisher"])
    reviewer = await t.principal("sam", ["security_reviewer"])
    app = await new_app(packager, [t.root])
    vid = (await new_version(packager, app["id"]))["id"]
    (await packager.post(f"/api/v1/versions/{vid}/artifacts", artifact("fail", high=2))).ok(201)
    (await packager.post(f"/api/v1/versions/{vid}/evidence", {"parts": COMPLETE})).ok(201)
    await move(packager, vid, "packaged", "staged")
    assert (
        await packager.post(f"/api/v1/versions/{vid}/transition", {"to": "approved"})
    ).status == 403
    await move(cab, vid, "approved")
    assert (
        await packager.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    ).status == 403

    refused = await publisher.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert refused.status == 409
    error = refused.body["error"]
    assert "supply-chain gate" in error["message"] and "did not pass" in error["message"]
    assert error["details"]["gate"]["ok"] is False and error["details"]["missing_evidence"] == []

    first = await request_exception(packager, vid)
    still = await publisher.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert still.status == 409  # requested is not approved
    await decide(reviewer, first, "approve")
    needs_record = await publisher.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert needs_record.status == 409
    assert needs_record.body["error"]["details"]["gate"]["exception_id"] == first
    assert needs_record.body["error"]["details"]["missing_evidence"] == ["exceptions"]
    parts = {**COMPLETE, "exceptions": {"ids": [first]}}
    (await packager.post(f"/api/v1/versions/{vid}/evidence", {"parts": parts})).ok(201)

    async with cp.state.sessions() as session:
        await session.execute(
            update(RiskException)
            .where(RiskException.id == first)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
        await session.commit()
    expired = await publisher.post(f"/api/v1/versions/{vid}/transition", {"to": "published"})
    assert expired.status == 409 and "no approved, unexpired" in expired.body["error"]["message"]
    assert (await t.owner.get(f"/api/v1/exceptions/{first}")).ok()["active"] is False

    second = await request_exception(packager, vid)
    await decide(reviewer, second, "approve")
    async with cp.state.sessions() as session:
        gate = await supply_chain_gate(session, t.id, vid, utcnow())
    assert gate.ok and gate.exception_id == second
    published = await move(publisher, vid, "published")
    assert published["state"] == "published"

    changes = await events(t.owner, "catalog_changed")
    publishes = [(e["outcome"], e["actor"]) for e in changes if e["data"].get("to") == "published"]
    assert publishes == [("denied", "paul")] * 4 + [("success", "paul")]
    assert changes[-1]["data"]["exception_id"] == second


async def request_exception(client: Client, version_id: str, days: int = 30) -> str:
    body = {
        "kind": "vulnerability",
        "reason": "CVE-2025-0001 has no fix yet; the vendor ships one next month",
        "compensating_controls": ["ring 1 only", "EDR rule blocks the exploit path"],
        "owner": "owner",
        "expires_at": (utcnow() + timedelta(days=days)).isoformat(),
    }
    created = (await client.post(f"/api/v1/versions/{version_id}/exceptions", body)).ok(201)
    assert created["state"] == "requested"
    return str(created["id"])


async def decide(client: Client, exception_id: str, decision: str) -> dict[str, Any]:
    body = {"decision": decision, "comment": "compensating controls reviewed"}
    return (await client.post(f"/api/v1/exceptions/{exception_id}/decision", body)).ok()  # type: ignore[no-any-return]


async def test_changes_stay_inside_the_callers_subtree(cp: ControlPlane) -> None:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "engineering")
    fin = await t.scope(t.root, "department", "finance")
    packager = await t.principal("eve", ["packaging_engineer"], eng)
    outside = await packager.post("/api/v1/apps", _app_body(fin, name="ledger"))
    assert outside.status == 403
    mine = await new_app(packager, [eng], name="vscode")
    await new_version(packager, mine["id"])
    org_wide = await new_app(t.owner, [t.root])
    refused = await packager.post(
        f"/api/v1/apps/{org_wide['id']}/versions", {"version": "1.0.0", "supported_os": ["x"]}
    )
    assert refused.status == 403
    # Reading the catalog is tenant-wide.
    names = {a["name"] for a in (await packager.get("/api/v1/apps")).ok()["items"]}
    assert names == {"vscode", "firefox"}
    viewer = await t.principal("vic", ["viewer"])
    assert (await viewer.post("/api/v1/apps", _app_body(t.root, name="y"))).status == 403


async def test_other_tenants_ids_are_not_found(cp: ControlPlane) -> None:
    a, b = await cp.tenant(), await cp.tenant()
    vid = await approved_version(a)
    app_id = (await a.owner.get("/api/v1/apps")).ok()["items"][0]["id"]
    for path in (
        f"/api/v1/apps/{app_id}",
        f"/api/v1/apps/{app_id}/versions",
        f"/api/v1/versions/{vid}",
        f"/api/v1/versions/{vid}/artifacts",
    ):
        assert (await b.owner.get(path)).status == 404, path
    assert (
        await b.owner.post(f"/api/v1/versions/{vid}/transition", {"to": "retired"})
    ).status == 404
    assert (await b.owner.post(f"/api/v1/versions/{vid}/artifacts", artifact())).status == 404
    assert (
        await b.owner.post(
            f"/api/v1/apps/{app_id}/versions", {"version": "9.0.0", "supported_os": ["x"]}
        )
    ).status == 404
    assert (await b.owner.post("/api/v1/apps", _app_body(a.root))).status == 404
    assert (await b.owner.get("/api/v1/apps")).ok()["items"] == []


async def test_ids_that_cannot_exist_are_not_found(cp: ControlPlane) -> None:
    # PostgreSQL answers a NUL in a text parameter with an error; it must stay a 404 or a 400.
    t = await cp.tenant()
    for path in ("/api/v1/apps/a%00b", "/api/v1/versions/a%00b", "/api/v1/versions/a%0A"):
        assert (await t.owner.get(path)).status == 404, path
    assert (await t.owner.get("/api/v1/apps", params={"name": "a\x00b"})).status == 400
    assert (await t.owner.post("/api/v1/apps", _app_body("scp\x00"))).status == 422
