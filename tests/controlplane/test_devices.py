"""Devices and inventory through the HTTP API: registration, idempotent and batch reports."""

from __future__ import annotations

from typing import Any

from tests.controlplane.client import Client, ControlPlane, Tenant


def pkgs(*names: str, version: str = "1.0") -> list[dict[str, Any]]:
    return [{"manager": "brew", "name": n, "version": version} for n in names]


async def register(t: Tenant, name: str, scope: str, **extra: Any) -> str:
    body = {"name": name, "platform": "macos", "scope_ids": [scope], **extra}
    return str((await t.owner.post("/api/v1/devices", body)).ok(201)["id"])


async def test_registration_validates_and_lists_by_scope(cp: ControlPlane) -> None:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "eng")
    fin = await t.scope(t.root, "department", "fin")
    ids = [await register(t, f"mac-{n}", eng, ring=n % 5) for n in range(5)]
    await register(t, "fin-1", fin, managed_mode="managed-enforced", site_class="air_gapped")
    dup = await t.owner.post(
        "/api/v1/devices", {"name": "mac-1", "platform": "macos", "scope_ids": [eng]}
    )
    assert dup.status == 409
    org = await t.owner.post(
        "/api/v1/devices", {"name": "x", "platform": "macos", "scope_ids": [t.root]}
    )
    assert org.status == 422 and org.body["error"]["field"] == "scope_ids"
    bad_mode = await t.owner.post(
        "/api/v1/devices",
        {"name": "y", "platform": "macos", "scope_ids": [eng], "managed_mode": "x"},
    )
    assert bad_mode.status == 422 and bad_mode.body["error"]["field"] == "managed_mode"
    first = (await t.owner.get("/api/v1/devices", params={"scope_id": eng, "limit": "3"})).ok()
    assert len(first["items"]) == 3 and first["next_cursor"]
    rest = (
        await t.owner.get(
            "/api/v1/devices",
            params={"scope_id": eng, "limit": "3", "cursor": first["next_cursor"]},
        )
    ).ok()
    assert [d["id"] for d in first["items"] + rest["items"]] == sorted(ids)
    assert rest["next_cursor"] is None


async def test_inventory_reports_are_idempotent_by_sequence(cp: ControlPlane) -> None:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "eng")
    dev = await register(t, "mac-1", eng)
    path = f"/api/v1/devices/{dev}/inventory"
    first = (await t.owner.post(path, {"sequence": 5, "packages": pkgs("git", "jq")})).ok()
    assert first["accepted"] is True
    replay = (await t.owner.post(path, {"sequence": 5, "packages": pkgs("jq", "git")})).ok()
    assert replay["accepted"] is False  # same content, any order: nothing changes
    other = await t.owner.post(path, {"sequence": 5, "packages": pkgs("git")})
    assert other.status == 409 and other.body["error"]["field"] == "sequence"
    older = await t.owner.post(path, {"sequence": 4, "packages": pkgs("git")})
    assert older.status == 409 and older.body["error"]["details"]["applied_sequence"] == 5
    twice = await t.owner.post(path, {"sequence": 6, "packages": pkgs("git", "git")})
    assert twice.status == 422
    stored = (await t.owner.get(path)).ok()
    assert stored["sequence"] == 5
    assert [p["name"] for p in stored["packages"]] == ["git", "jq"]
    events = (await t.owner.get("/api/v1/events", params={"type": "inventory_reported"})).ok()
    assert len(events["items"]) == 1


async def test_batch_reports_apply_each_device_on_its_own(cp: ControlPlane) -> None:
    t, other = await cp.tenant(), await cp.tenant()
    eng = await t.scope(t.root, "department", "eng")
    a, b = await register(t, "mac-a", eng), await register(t, "mac-b", eng)
    foreign = await register(other, "mac-z", await other.scope(other.root, "department", "x"))
    (
        await t.owner.post(
            f"/api/v1/devices/{b}/inventory", {"sequence": 9, "packages": pkgs("git")}
        )
    ).ok()
    agent = await t.principal("collector", ["operator"])
    out = (
        await agent.post(
            "/api/v1/inventory/reports",
            {
                "reports": [
                    {"device_id": a, "sequence": 1, "packages": pkgs("git")},
                    {"device_id": b, "sequence": 9, "packages": pkgs("git")},
                    {"device_id": foreign, "sequence": 1, "packages": pkgs("git")},
                ]
            },
        )
    ).ok()
    by_id = {r["device_id"]: r for r in out["results"]}
    assert by_id[a]["status"] == "accepted" and by_id[a]["state"] is not None
    assert by_id[b]["status"] == "replay"
    assert by_id[foreign]["status"] == "refused" and by_id[foreign]["error"]["status"] == 404
    assert (await t.owner.get(f"/api/v1/devices/{a}")).ok()["inventory_seq"] == 1
    assert (await other.owner.get(f"/api/v1/devices/{foreign}")).ok()["inventory_seq"] == -1
    dup = await agent.post(
        "/api/v1/inventory/reports",
        {
            "reports": [
                {"device_id": a, "sequence": 2, "packages": []},
                {"device_id": a, "sequence": 3, "packages": []},
            ]
        },
    )
    assert dup.status == 422


async def test_devices_filter_by_exact_name_within_the_callers_scope(cp: ControlPlane) -> None:
    t, other = await cp.tenant(), await cp.tenant()
    eng = await t.scope(t.root, "department", "eng")
    fin = await t.scope(t.root, "department", "fin")
    mac = await register(t, "Mac-Ana", eng)
    await register(t, "mac-ana2", eng)
    secret = await register(t, "fin-box", fin)
    await register(other, "mac-ana", await other.scope(other.root, "department", "eng"))

    async def named(client: Client, name: str, **params: str) -> list[str]:
        body = (await client.get("/api/v1/devices", params={"name": name, **params})).ok()
        assert body["next_cursor"] is None
        return [d["id"] for d in body["items"]]

    assert await named(t.owner, "mac-ana") == [mac]  # case-insensitive, not a prefix
    assert await named(t.owner, "MAC-ANA", scope_id=eng) == [mac]
    assert await named(t.owner, "mac-ana", scope_id=fin) == []
    assert await named(t.owner, "mac") == []
    eng_only = await t.principal("eng-viewer", ["viewer"], eng)
    assert await named(eng_only, "fin-box") == []  # outside the caller's subtree
    assert await named(t.owner, "fin-box") == [secret]
    empty = await t.owner.get("/api/v1/devices", params={"name": ""})
    assert empty.status == 400 and empty.body["error"]["field"] == "name"
