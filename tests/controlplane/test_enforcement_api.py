"""Enforcement through the HTTP API: each managed mode, snapshots, events and confinement."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from controlplane.api import enforcement as enforcement_api
from controlplane.models import Event
from controlplane.snapshot import verify_snapshot
from tests.controlplane.client import Client, ControlPlane, Tenant

CHECK = "/api/v1/enforcement/check"


class FakeClock:
    """The monotonic clock of the device-facts cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def expire_facts(self) -> None:
        self.now += enforcement_api.FACTS_TTL


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(enforcement_api, "_clock", fake)
    return fake


@dataclass
class Fleet:
    t: Tenant
    dept: str
    team: str
    devices: dict[str, str]
    """unmanaged, readonly, enforced, bare (enforced, in a scope no bundle reaches)."""


async def fleet(cp: ControlPlane) -> Fleet:
    t = await cp.tenant()
    dept = await t.scope(t.root, "department", "engineering")
    team = await t.scope(dept, "team", "platform")
    other = await t.scope(t.root, "department", "finance")
    bundle = {
        "policy_id": "platform",
        "policy_version": 1,
        "scope_bindings": [team],
        "allowed_packages": [{"manager": "brew", "name": "git", "versions": ">=2.40"}],
        "required_packages": [{"manager": "brew", "name": "osquery"}],
        "denied_packages": [{"manager": "brew", "name": "telnet"}],
        "pin_rules": [{"manager": "brew", "name": "python@3.12", "version": "3.12.7"}],
        "guarded_action_rules": [{"action": "upgrade", "manager": "softwareupdate"}],
    }
    (await t.owner.post("/api/v1/policies", {"bundle": bundle})).ok(201)
    devices = {}
    for key, mode, scope in (
        ("unmanaged", "unmanaged", team),
        ("readonly", "managed-readonly", team),
        ("enforced", "managed-enforced", team),
        ("bare", "managed-enforced", other),
    ):
        created = await t.owner.post(
            "/api/v1/devices",
            {"name": f"mac-{key}", "platform": "macos", "managed_mode": mode, "scope_ids": [scope]},
        )
        devices[key] = created.ok(201)["id"]
    inventory = {
        "sequence": 1,
        "packages": [
            {"manager": "brew", "name": "git", "version": "2.44.0"},
            {"manager": "brew", "name": "osquery", "version": "5.12.1"},
            {"manager": "brew", "name": "ripgrep", "version": "14.1.0", "pinned": True},
            {"manager": "brew", "name": "python@3.12", "version": "3.12.7", "pinned": True},
        ],
    }
    (await t.owner.post(f"/api/v1/devices/{devices['enforced']}/inventory", inventory)).ok()
    return Fleet(t, dept, team, devices)


async def decide(
    client: Client,
    device: str,
    action: str,
    package: str | None = None,
    version: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"device_id": device, "manager": "brew", "action": action, **extra}
    if package is not None:
        body["package"] = package
    if version is not None:
        body["version"] = version
    return dict((await client.post(CHECK, body)).ok())


async def events(cp: ControlPlane, tenant_id: str) -> list[Event]:
    async with cp.state.sessions() as session:
        rows = await session.execute(
            select(Event)
            .where(Event.tenant_id == tenant_id, Event.type == "enforcement_decided")
            .order_by(Event.seq)
        )
        return list(rows.scalars())


async def test_each_mode_answers_as_the_seed_says(cp: ControlPlane) -> None:
    f = await fleet(cp)
    owner, d = f.t.owner, f.devices

    unmanaged = await decide(owner, d["unmanaged"], "install", "telnet", "0.17")
    assert unmanaged["allowed"] and not unmanaged["enforced"] and unmanaged["source"] == "none"
    assert unmanaged["rule"]["kind"] == "mode" and "not evaluated" in unmanaged["reason"]

    readonly = await decide(owner, d["readonly"], "install", "telnet", "0.17")
    assert readonly["allowed"] and readonly["would_deny"] and not readonly["enforced"]
    assert readonly["source"] == "server" and readonly["rule"]["kind"] == "deny"

    enforced = await decide(owner, d["enforced"], "install", "telnet", "0.17")
    assert not enforced["allowed"] and enforced["enforced"] and enforced["would_deny"]
    assert enforced["rule"]["origin"]["scope_id"] == f.team
    assert enforced["rule"]["origin"]["policy_id"] == "platform"
    assert enforced["rule"]["origin"]["policy_version"] == 1
    assert enforced["policy_version"] == "platform@1"

    allowed = await decide(owner, d["enforced"], "install", "git", "2.45.0")
    assert allowed["allowed"] and allowed["rule"]["kind"] == "allow"
    out_of_range = await decide(owner, d["enforced"], "install", "git", "2.30.0")
    assert not out_of_range["allowed"] and "outside the range >=2.40" in out_of_range["reason"]
    required = await decide(owner, d["enforced"], "uninstall", "osquery")
    assert not required["allowed"] and required["rule"]["kind"] == "require"
    unpin = await decide(owner, d["enforced"], "unpin", "python@3.12")
    assert not unpin["allowed"] and unpin["rule"]["kind"] == "pin"

    for action, allowed_ in (("list", True), ("search", True), ("install", False)):
        bare = await decide(owner, d["bare"], action, None if action == "list" else "jq")
        assert bare["allowed"] is allowed_ and bare["rule"]["kind"] == "no_policy"
        assert "no valid policy snapshot" in bare["reason"] and bare["source"] == "none"


async def test_upgrade_all_uses_the_reported_inventory(cp: ControlPlane) -> None:
    f = await fleet(cp)
    d = await decide(f.t.owner, f.devices["enforced"], "upgrade_all")
    assert d["allowed"] and d["excluded_packages"] == ["python@3.12", "ripgrep"]


async def test_guarded_action_needs_confirmation_in_each_managed_mode(cp: ControlPlane) -> None:
    f = await fleet(cp)
    for key in ("readonly", "enforced"):
        d = await decide(
            f.t.owner, f.devices[key], "upgrade", "macOS", "15.2", manager="softwareupdate"
        )
        assert d["allowed"] and d["requires_confirmation"]
        assert d["confirmation_rule"]["kind"] == "guard"
        assert d["confirmation_rule"]["origin"]["policy_id"] == "platform"
    unmanaged = await decide(
        f.t.owner, f.devices["unmanaged"], "upgrade", "macOS", "15.2", manager="softwareupdate"
    )
    assert not unmanaged["requires_confirmation"]


async def test_only_denials_and_confirmations_are_recorded(cp: ControlPlane) -> None:
    f = await fleet(cp)
    owner, d = f.t.owner, f.devices
    await decide(owner, d["enforced"], "install", "git", "2.45.0")
    await decide(owner, d["unmanaged"], "install", "telnet", "1")
    assert await events(cp, f.t.id) == []
    await decide(owner, d["enforced"], "install", "telnet", "1")
    await decide(owner, d["readonly"], "install", "telnet", "1")
    await decide(owner, d["enforced"], "upgrade", "macOS", "15.2", manager="softwareupdate")
    recorded = await events(cp, f.t.id)
    assert [(e.outcome, e.device_id, e.action) for e in recorded] == [
        ("denied", d["enforced"], "package.install"),
        ("would_deny", d["readonly"], "package.install"),
        ("confirmation_required", d["enforced"], "package.upgrade"),
    ]
    first = recorded[0]
    assert first.manager == "brew" and first.policy_version == "platform@1"
    assert first.scope_id == f.team and first.data["package"] == "telnet"
    assert first.data["rule"]["origin"]["policy_id"] == "platform"


async def test_snapshot_round_trip_and_offline_decision(cp: ControlPlane, clock: FakeClock) -> None:
    f = await fleet(cp)
    owner, device = f.t.owner, f.devices["enforced"]
    envelope = (await owner.get(f"/api/v1/devices/{device}/policy-snapshot")).ok()
    assert envelope["signature"]["alg"] == "Ed25519"
    assert envelope["document"]["device_id"] == device
    assert envelope["document"]["tenant_id"] == f.t.id
    keys = (await owner.get("/api/v1/signing-keys")).ok()["keys"]
    trusted = {k["key_id"]: k["public_key"] for k in keys if k["owner"] == "control-plane"}
    now = datetime.now(UTC)
    policy = verify_snapshot(envelope, trusted, now, device_id=device, tenant_id=f.t.id)
    assert ("brew", "telnet") in policy.rules
    expires = datetime.fromisoformat(envelope["document"]["expires_at"])
    assert timedelta(days=29) < expires - now <= cp.settings.snapshot_ttl

    # A newer bundle allows telnet; an endpoint enforcing from its snapshot still denies it.
    newer = {
        "policy_id": "platform",
        "policy_version": 2,
        "scope_bindings": [f.team],
        "allowed_packages": [{"manager": "brew", "name": "telnet"}],
    }
    (await owner.post("/api/v1/policies", {"bundle": newer})).ok(201)
    clock.expire_facts()
    current = await decide(owner, device, "install", "telnet", "1")
    assert current["allowed"] and current["source"] == "server"
    for _ in range(2):  # the second decision comes from the verified-snapshot cache
        offline = await decide(owner, device, "install", "telnet", "1", snapshot=envelope)
        assert not offline["allowed"] and offline["source"] == "snapshot"
        assert offline["policy_version"] == "platform@1" and offline["snapshot_error"] is None


async def test_tampered_or_foreign_snapshot_counts_as_none(cp: ControlPlane) -> None:
    f = await fleet(cp)
    owner, device = f.t.owner, f.devices["enforced"]
    envelope = (await owner.get(f"/api/v1/devices/{device}/policy-snapshot")).ok()
    tampered = copy.deepcopy(envelope)
    tampered["document"]["policy"]["rules"] = []
    for bad, why in ((tampered, "does not verify"), ({"document": {}}, "not a signed envelope")):
        d = await decide(owner, device, "install", "git", "2.45.0", snapshot=bad)
        assert not d["allowed"] and d["source"] == "none" and d["rule"]["kind"] == "no_policy"
        assert why in d["snapshot_error"] and "presented snapshot refused" in d["reason"]
        listed = await decide(owner, device, "list", snapshot=bad)
        assert listed["allowed"]
    # Another device's snapshot, valid in itself, is refused too (also once cached).
    await decide(owner, device, "install", "git", "2.45.0", snapshot=envelope)
    readonly = f.devices["readonly"]
    foreign = await decide(owner, readonly, "install", "git", "2.45.0", snapshot=envelope)
    assert foreign["source"] == "none" and "issued to device" in foreign["snapshot_error"]
    assert foreign["allowed"] and foreign["would_deny"]  # readonly reports, never blocks


async def test_snapshot_needs_a_valid_policy(cp: ControlPlane) -> None:
    f = await fleet(cp)
    r = await f.t.owner.get(f"/api/v1/devices/{f.devices['bare']}/policy-snapshot")
    assert r.status == 409 and r.body["error"]["code"] == "conflict"


async def test_cross_tenant_and_out_of_subtree_devices_are_refused(cp: ControlPlane) -> None:
    f = await fleet(cp)
    other = await cp.tenant()
    device = f.devices["enforced"]
    r = await other.owner.post(CHECK, {"device_id": device, "manager": "brew", "action": "list"})
    assert r.status == 404
    assert (await other.owner.get(f"/api/v1/devices/{device}/policy-snapshot")).status == 404
    finance = (await f.t.owner.get("/api/v1/scopes")).ok()["items"]
    fin = next(s["id"] for s in finance if s["name"] == "finance")
    outsider = await f.t.principal("fin-ops", ["endpoint_ops"], fin)
    r = await outsider.post(CHECK, {"device_id": device, "manager": "brew", "action": "list"})
    assert r.status == 403
    viewer = await f.t.principal("vera", ["viewer"])
    r = await viewer.post(CHECK, {"device_id": device, "manager": "brew", "action": "list"})
    assert r.status == 403 and "enforcement.check" in r.body["error"]["message"]
    ops = await f.t.principal("ops", ["endpoint_ops"], f.dept)
    assert (await decide(ops, device, "list"))["allowed"]


async def test_request_validation(cp: ControlPlane) -> None:
    f = await fleet(cp)
    device = f.devices["enforced"]
    r = await f.t.owner.post(CHECK, {"device_id": device, "manager": "brew", "action": "install"})
    assert r.status == 422 and r.body["error"]["field"] == "package"
    r = await f.t.owner.post(CHECK, {"device_id": device, "manager": "brew", "action": "nuke"})
    assert r.status == 422 and r.body["error"]["field"] == "action"


async def test_device_facts_are_reused_for_at_most_the_ttl(
    cp: ControlPlane, clock: FakeClock
) -> None:
    f = await fleet(cp)
    owner, device = f.t.owner, f.devices["enforced"]
    assert not (await decide(owner, device, "install", "telnet", "1"))["allowed"]
    patched = await owner.request(
        "PATCH", f"/api/v1/devices/{device}", {"managed_mode": "unmanaged"}
    )
    patched.ok()
    clock.now += enforcement_api.FACTS_TTL / 2
    cached = await decide(owner, device, "install", "telnet", "1")
    assert cached["mode"] == "managed-enforced" and not cached["allowed"]
    clock.now += enforcement_api.FACTS_TTL / 2
    fresh = await decide(owner, device, "install", "telnet", "1")
    assert fresh["mode"] == "unmanaged" and fresh["allowed"]
    # Confinement is checked against each caller, cached facts or not.
    other = await cp.tenant()
    r = await other.owner.post(CHECK, {"device_id": device, "manager": "brew", "action": "list"})
    assert r.status == 404
