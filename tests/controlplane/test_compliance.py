"""Compliance through the HTTP API: device records, scope summaries, package drift, recompute."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from controlplane.models import Device, utcnow
from controlplane.recompute import sweep_stale
from tests.controlplane.client import Client, ControlPlane, Tenant

GIT = {"manager": "brew", "name": "git", "versions": ">=2.40"}
TELNET = {"manager": "brew", "name": "telnet"}
PYTHON_PIN = {"manager": "brew", "name": "python", "version": "3.12.7"}
CLEAN = [
    {"manager": "brew", "name": "git", "version": "2.47.1"},
    {"manager": "brew", "name": "python", "version": "3.12.7", "pinned": True},
]


def base(version: int = 1, scope: str = "", **rules: Any) -> dict[str, Any]:
    """The organization baseline: git required, telnet denied, python pinned, brew managed."""
    bundle = {
        "policy_id": "base",
        "policy_version": version,
        "scope_bindings": [scope],
        "required_packages": [GIT],
        "denied_packages": [TELNET],
        "pin_rules": [PYTHON_PIN],
        "managed_managers": ["brew"],
    }
    return {"bundle": bundle | rules}


async def device(t: Tenant, name: str, scope: str, **extra: Any) -> str:
    body = {"name": name, "platform": "macos", "scope_ids": [scope], **extra}
    return str((await t.owner.post("/api/v1/devices", body)).ok(201)["id"])


async def report(client: Client, device_id: str, seq: int, packages: list[Any]) -> Any:
    body = {"sequence": seq, "packages": packages}
    return (await client.post(f"/api/v1/devices/{device_id}/inventory", body)).ok()


async def summary(client: Client, scope: str) -> dict[str, Any]:
    return dict((await client.get(f"/api/v1/scopes/{scope}/compliance")).ok())


async def finished(client: Client, job_id: str) -> dict[str, Any]:
    for _ in range(400):
        job = (await client.get(f"/api/v1/jobs/{job_id}")).ok()
        if job["status"] in ("done", "failed"):
            return dict(job)
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} did not finish")


async def setup(cp: ControlPlane) -> tuple[Tenant, dict[str, str]]:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "engineering")
    web = await t.scope(eng, "team", "web")
    ops = await t.scope(t.root, "department", "operations")
    (await t.owner.post("/api/v1/policies", base(scope=t.root))).ok(201)
    return t, {"org": t.root, "eng": eng, "web": web, "ops": ops}


async def test_inventory_report_evaluates_the_device_and_moves_scope_counts(
    cp: ControlPlane,
) -> None:
    t, s = await setup(cp)
    mac = await device(t, "mac-1", s["web"])
    before = await summary(t.owner, s["web"])
    # registered but never reported: counted at once, as unknown
    assert before["devices"] == 1 and before["states"]["unknown"] == 1
    assert before["updated_at"] is not None

    accepted = await report(t.owner, mac, 1, CLEAN)
    assert accepted["compliance"]["state"] == "compliant"
    assert accepted["compliance"]["policy_version"] == "base@1"
    for scope in ("web", "eng", "org"):
        counts = await summary(t.owner, s[scope])
        assert counts["states"] == {"compliant": 1, "warning": 0, "non_compliant": 0, "unknown": 0}
        assert counts["devices"] == 1 and counts["updated_at"] is not None
    assert (await summary(t.owner, s["ops"]))["devices"] == 0

    drifted = [{"manager": "brew", "name": "telnet", "version": "0.17"}, CLEAN[1]]
    assert (await report(t.owner, mac, 2, drifted))["compliance"]["state"] == "non_compliant"
    record = (await t.owner.get(f"/api/v1/devices/{mac}/compliance")).ok()
    assert record["device_id"] == mac and record["policy_version"] == "base@1"
    assert record["reason"] == "2 violations (missing_required 1, present_denied 1)"
    assert record["violations"] == [
        {
            "category": "missing_required",
            "manager": "brew",
            "package": "git",
            "action": "install",
            "expected": ">=2.40",
            "actual": "absent",
            "origin": {
                "scope_id": s["org"],
                "level": "organization",
                "policy_id": "base",
                "policy_version": 1,
            },
        },
        {
            "category": "present_denied",
            "manager": "brew",
            "package": "telnet",
            "action": "uninstall",
            "expected": "absent",
            "actual": "0.17",
            "origin": {
                "scope_id": s["org"],
                "level": "organization",
                "policy_id": "base",
                "policy_version": 1,
            },
        },
    ]
    eng = await summary(t.owner, s["eng"])
    assert eng["states"]["compliant"] == 0 and eng["states"]["non_compliant"] == 1
    assert eng["categories"] == {
        "missing_required": 1,
        "present_denied": 1,
        "version_out_of_range": 0,
        "pin_mismatch": 0,
        "unmanaged_toolchain": 0,
    }

    # A second device elsewhere counts in its own subtree and the organization only.
    pc = await device(t, "pc-1", s["ops"], managed_mode="unmanaged")
    unpinned = [CLEAN[0], {"manager": "brew", "name": "python", "version": "3.12.7"}]
    warned = (
        await report(
            t.owner, pc, 1, [*unpinned, {"manager": "pip", "name": "rich", "version": "13.9"}]
        )
    )["compliance"]
    assert warned["state"] == "warning"
    assert warned["reason"].endswith("reporting only (unmanaged device)")
    assert [v["category"] for v in warned["violations"]] == ["pin_mismatch", "unmanaged_toolchain"]
    assert warned["violations"][1]["package"] == "*"
    org = await summary(t.owner, s["org"])
    assert org["devices"] == 2
    assert (org["states"]["non_compliant"], org["states"]["warning"]) == (1, 1)
    assert (await summary(t.owner, s["eng"]))["devices"] == 1

    # Back to clean: every category count returns to zero.
    await report(t.owner, mac, 3, CLEAN)
    eng = await summary(t.owner, s["eng"])
    assert eng["states"]["compliant"] == 1 and set(eng["categories"].values()) == {0}


async def test_publishing_a_policy_recomputes_every_device(cp: ControlPlane) -> None:
    t, s = await setup(cp)
    macs = [await device(t, f"mac-{i}", s["web"]) for i in range(3)]
    for mac in macs:
        await report(t.owner, mac, 1, CLEAN)
    never = await device(t, "mac-new", s["eng"])
    assert (await summary(t.owner, s["org"]))["states"]["compliant"] == 3

    git_too_old = base(2, s["org"], required_packages=[GIT | {"versions": ">=2.50"}])
    published = (await t.owner.post("/api/v1/policies", git_too_old)).ok(201)
    job = await finished(t.owner, published["recompute_job_id"])
    assert job["status"] == "done" and job["kind"] == "compliance_recompute"
    assert job["result"]["devices"] == 4
    assert job["result"]["by_state"] == {"warning": 3, "unknown": 1}

    org = await summary(t.owner, s["org"])
    assert org["states"] == {"compliant": 0, "warning": 3, "non_compliant": 0, "unknown": 1}
    assert org["categories"]["version_out_of_range"] == 3
    record = (await t.owner.get(f"/api/v1/devices/{macs[0]}/compliance")).ok()
    assert record["policy_version"] == "base@2" and record["state"] == "warning"
    unknown = (await t.owner.get(f"/api/v1/devices/{never}/compliance")).ok()
    assert unknown["state"] == "unknown"
    assert unknown["reason"] == "the device has never reported an inventory"

    # A manual recompute finds nothing new and leaves the counts as they are.
    queued = (await t.owner.post("/api/v1/compliance/recompute")).ok(202)
    assert (await finished(t.owner, queued["job_id"]))["result"]["devices"] == 4
    assert (await summary(t.owner, s["org"]))["states"] == org["states"]


async def test_device_lists_filter_by_state_category_and_scope(cp: ControlPlane) -> None:
    t, s = await setup(cp)
    ok = await device(t, "a-ok", s["web"])
    bad = await device(t, "b-bad", s["web"])
    warn = await device(t, "c-warn", s["ops"])
    await report(t.owner, ok, 1, CLEAN)
    await report(t.owner, bad, 1, [*CLEAN, {"manager": "brew", "name": "telnet", "version": "1"}])
    await report(
        t.owner,
        warn,
        1,
        [CLEAN[0], {"manager": "brew", "name": "python", "version": "3.11.0", "pinned": True}],
    )

    def ids(body: dict[str, Any]) -> list[str]:
        return [item["device_id"] for item in body["items"]]

    everything = (await t.owner.get("/api/v1/compliance/devices")).ok()
    assert ids(everything) == sorted([ok, bad, warn])
    by_state = (
        await t.owner.get("/api/v1/compliance/devices", params={"state": "non_compliant"})
    ).ok()
    assert ids(by_state) == [bad]
    assert by_state["items"][0]["categories"] == ["present_denied"]
    assert by_state["items"][0]["name"] == "b-bad" and by_state["items"][0]["violations"] == 1
    pinned = (
        await t.owner.get("/api/v1/compliance/devices", params={"category": "pin_mismatch"})
    ).ok()
    assert ids(pinned) == [warn]
    in_web = (await t.owner.get("/api/v1/compliance/devices", params={"scope_id": s["web"]})).ok()
    assert ids(in_web) == sorted([ok, bad])

    first = (await t.owner.get("/api/v1/compliance/devices", params={"limit": 2})).ok()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = (
        await t.owner.get(
            "/api/v1/compliance/devices", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).ok()
    assert ids(first) + ids(rest) == sorted([ok, bad, warn]) and rest["next_cursor"] is None
    bad_query = await t.owner.get("/api/v1/compliance/devices", params={"state": "fine"})
    assert bad_query.status == 400


async def test_package_view_lists_findings_across_devices(cp: ControlPlane) -> None:
    t, s = await setup(cp)
    telnet = {"manager": "brew", "name": "telnet", "version": "0.17"}
    devices = [await device(t, f"mac-{i}", s["web"]) for i in range(3)]
    for i, mac in enumerate(devices):
        await report(t.owner, mac, 1, [*CLEAN, telnet] if i < 2 else CLEAN)

    view = (await t.owner.get("/api/v1/compliance/packages/brew/telnet")).ok()
    assert view["counts"]["present_denied"] == 2 and view["counts"]["missing_required"] == 0
    assert [item["device_id"] for item in view["items"]] == sorted(devices[:2])
    assert view["items"][0]["state"] == "non_compliant"
    assert view["items"][0]["violations"][0]["action"] == "uninstall"
    page = (await t.owner.get("/api/v1/compliance/packages/brew/telnet", params={"limit": 1})).ok()
    assert len(page["items"]) == 1 and page["next_cursor"]

    git_missing = (await t.owner.get("/api/v1/compliance/packages/brew/git")).ok()
    assert git_missing["items"] == [] and set(git_missing["counts"].values()) == {0}


async def test_reads_are_confined_to_tenant_and_subtree(cp: ControlPlane) -> None:
    t, s = await setup(cp)
    web_mac = await device(t, "mac-web", s["web"])
    ops_pc = await device(t, "pc-ops", s["ops"])
    telnet = {"manager": "brew", "name": "telnet", "version": "0.17"}
    for dev in (web_mac, ops_pc):
        await report(t.owner, dev, 1, [*CLEAN, telnet])
    eng_viewer = await t.principal("eng-viewer", ["viewer"], s["eng"])

    assert (await eng_viewer.get(f"/api/v1/devices/{web_mac}/compliance")).status == 200
    assert (await eng_viewer.get(f"/api/v1/devices/{ops_pc}/compliance")).status == 403
    assert (await eng_viewer.get(f"/api/v1/scopes/{s['ops']}/compliance")).status == 403
    assert (await eng_viewer.get(f"/api/v1/scopes/{s['eng']}/compliance")).status == 200
    listed = (await eng_viewer.get("/api/v1/compliance/devices")).ok()
    assert [i["device_id"] for i in listed["items"]] == [web_mac]
    view = (await eng_viewer.get("/api/v1/compliance/packages/brew/telnet")).ok()
    assert [i["device_id"] for i in view["items"]] == [web_mac]
    assert view["counts"]["present_denied"] == 1
    assert (await eng_viewer.post("/api/v1/compliance/recompute")).status == 403

    ops = await t.principal("eng-ops", ["endpoint_ops"], s["eng"])
    job_id = (await ops.post("/api/v1/compliance/recompute")).ok(202)["job_id"]
    job = await finished(ops, job_id)
    # Tenant-wide figures stay with organization-wide principals.
    assert "devices" not in job["result"]
    assert (await finished(t.owner, job_id))["result"]["devices"] == 2

    other = await cp.tenant()
    assert (await other.owner.get(f"/api/v1/devices/{web_mac}/compliance")).status == 404
    assert (await other.owner.get(f"/api/v1/scopes/{s['eng']}/compliance")).status == 404
    assert (await other.owner.get(f"/api/v1/jobs/{job_id}")).status == 404
    foreign = (await other.owner.get("/api/v1/compliance/packages/brew/telnet")).ok()
    assert foreign["items"] == []


async def test_devices_without_policy_or_with_stale_check_in_are_unknown(cp: ControlPlane) -> None:
    t = await cp.tenant()
    governed = await t.scope(t.root, "department", "governed")
    loose = await t.scope(t.root, "department", "loose")
    (await t.owner.post("/api/v1/policies", base(scope=governed))).ok(201)
    free = await device(t, "free-1", loose)
    record = (await report(t.owner, free, 1, CLEAN))["compliance"]
    assert (record["state"], record["policy_version"]) == ("unknown", None)
    assert record["reason"] == "no valid policy applies to this device"

    mac = await device(t, "mac-1", governed)
    await report(t.owner, mac, 1, CLEAN)
    assert (await summary(t.owner, governed))["states"]["compliant"] == 1
    async with cp.state.sessions.begin() as session:
        old = utcnow() - cp.settings.stale_checkin_after - timedelta(minutes=1)
        await session.execute(update(Device).where(Device.id == mac).values(last_checkin_at=old))
    assert await sweep_stale(cp.state) >= 1
    record = (await t.owner.get(f"/api/v1/devices/{mac}/compliance")).ok()
    assert record["state"] == "unknown" and "older than 7 days" in record["reason"]
    counts = await summary(t.owner, governed)
    assert (counts["states"]["compliant"], counts["states"]["unknown"]) == (0, 1)


async def test_moving_a_device_moves_it_between_scope_counts(cp: ControlPlane) -> None:
    t, s = await setup(cp)
    mac = await device(t, "mac-move", s["web"])
    await report(t.owner, mac, 1, CLEAN)
    assert (await summary(t.owner, s["web"]))["devices"] == 1
    org_before = await summary(t.owner, s["org"])
    moved = await t.owner.request("PATCH", f"/api/v1/devices/{mac}", {"scope_ids": [s["ops"]]})
    assert moved.ok()["scope_ids"] == [s["ops"]]
    web, eng, ops = [await summary(t.owner, s[k]) for k in ("web", "eng", "ops")]
    assert (web["devices"], eng["devices"], ops["devices"]) == (0, 0, 1)
    assert ops["states"]["compliant"] == 1
    org_after = await summary(t.owner, s["org"])
    assert org_after["devices"] == org_before["devices"]
    assert org_after["states"] == org_before["states"]
