"""Policy bundles through the HTTP API: precedence, deny over allow, signing, immutability."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from controlplane.models import PolicyBundle
from controlplane.signing import b64u, canonical, public_key_text
from tests.controlplane.client import ControlPlane, Tenant


async def tree(t: Tenant) -> dict[str, str]:
    dept = await t.scope(t.root, "department", "engineering")
    team = await t.scope(dept, "team", "platform")
    env = await t.scope(team, "environment", "workstations")
    group = await t.scope(env, "device_group", "canary")
    return {"org": t.root, "dept": dept, "team": team, "env": env, "group": group}


def bundle(pid: str, scope: str, version: int = 1, **rules: Any) -> dict[str, Any]:
    return {
        "bundle": {"policy_id": pid, "policy_version": version, "scope_bindings": [scope], **rules}
    }


def pkg(name: str, versions: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"manager": "brew", "name": name}
    if versions:
        out["versions"] = versions
    return out


# package, expected effect (None = no rule), expected origin level
PRECEDENCE = [
    ("a", "allow", "team"),  # org deny, team allow: more specific wins
    ("b", "deny", "device_group"),  # org allow, group deny
    ("c", "deny", "department"),  # allow and deny in two bundles on one level: deny wins
    ("d", "deny", "environment"),  # require and deny on one level: deny wins
    ("e", "allow", "team"),  # only a team rule
    ("g", "allow", "environment"),  # org require, environment allow
    ("h", "require", "department"),  # dept require, dept allow: require is stronger than allow
    ("z", None, None),  # no rule anywhere
]


async def publish_precedence(t: Tenant, s: dict[str, str]) -> None:
    for body in (
        bundle(
            "org",
            s["org"],
            denied_packages=[pkg("a")],
            allowed_packages=[pkg("b")],
            required_packages=[pkg("g")],
        ),
        bundle(
            "dept-allow",
            s["dept"],
            allowed_packages=[pkg("c"), pkg("h")],
            required_packages=[pkg("h")],
        ),
        bundle("dept-deny", s["dept"], denied_packages=[pkg("c")], default_package_action="deny"),
        bundle("team", s["team"], allowed_packages=[pkg("a"), pkg("e")]),
        bundle(
            "env",
            s["env"],
            required_packages=[pkg("d")],
            denied_packages=[pkg("d")],
            allowed_packages=[pkg("g")],
        ),
        bundle("group", s["group"], denied_packages=[pkg("b")]),
    ):
        (await t.owner.post("/api/v1/policies", body)).ok(201)


async def test_precedence_table_and_provenance(cp: ControlPlane) -> None:
    t = await cp.tenant()
    s = await tree(t)
    await publish_precedence(t, s)
    device = (
        await t.owner.post(
            "/api/v1/devices", {"name": "mac-1", "platform": "macos", "scope_ids": [s["group"]]}
        )
    ).ok(201)
    eff = (await t.owner.get(f"/api/v1/devices/{device['id']}/effective-policy")).ok()["policy"]
    rules = {r["name"]: r for r in eff["rules"]}
    levels = {v: k for k, v in s.items()}
    for name, effect, level in PRECEDENCE:
        if effect is None:
            assert name not in rules
            continue
        rule = rules[name]
        assert level is not None
        assert (rule["effect"], rule["origin"]["level"]) == (effect, level), name
        assert (
            levels[rule["origin"]["scope_id"]]
            == {
                "team": "team",
                "device_group": "group",
                "department": "dept",
                "environment": "env",
            }[level]
        )
        assert isinstance(rule["origin"]["policy_version"], int)
    # the no-rule row falls to the default action, which names its origin too
    assert eff["default_package_action"] == "deny"
    assert eff["default_package_action_origin"]["policy_id"] == "dept-deny"
    assert eff["policy_version"] == "dept-allow@1,dept-deny@1,env@1,group@1,org@1,team@1"
    # A scope higher up sees only what is bound on its own path.
    team_eff = (await t.owner.get(f"/api/v1/scopes/{s['team']}/effective-policy")).ok()["policy"]
    team_rules = {r["name"]: r["effect"] for r in team_eff["rules"]}
    assert team_rules["b"] == "allow"
    assert "d" not in team_rules


async def test_device_without_bundles_has_no_policy(cp: ControlPlane) -> None:
    t = await cp.tenant()
    dept = await t.scope(t.root, "department", "sales")
    device = (
        await t.owner.post(
            "/api/v1/devices", {"name": "pc-1", "platform": "windows", "scope_ids": [dept]}
        )
    ).ok(201)
    eff = (await t.owner.get(f"/api/v1/devices/{device['id']}/effective-policy")).ok()
    assert eff["policy"] is None


async def test_versions_are_immutable(cp: ControlPlane) -> None:
    t = await cp.tenant()
    first = (
        await t.owner.post(
            "/api/v1/policies", bundle("base", t.root, 2, denied_packages=[pkg("telnet")])
        )
    ).ok(201)
    assert first["signed_by"] == "control-plane"
    again = await t.owner.post("/api/v1/policies", bundle("base", t.root, 2))
    assert again.status == 409 and again.body["error"]["field"] == "bundle.policy_version"
    older = await t.owner.post("/api/v1/policies", bundle("base", t.root, 1))
    assert older.status == 409
    put = await t.owner.request("PUT", "/api/v1/policies/base/versions/2", {"x": 1})
    assert put.status == 405
    stored = (await t.owner.get("/api/v1/policies/base/versions/2")).ok()
    assert stored["active"] and stored["verified"]
    assert stored["bundle"]["denied_packages"] == [{"manager": "brew", "name": "telnet"}]


def signed(key: Ed25519PrivateKey, key_id: str, body: dict[str, Any]) -> dict[str, Any]:
    sig = b64u(key.sign(canonical(body["bundle"])))
    return {**body, "signature": {"alg": "Ed25519", "key_id": key_id, "value": sig}}


async def test_bad_signature_is_refused_and_previous_version_stays(cp: ControlPlane) -> None:
    t = await cp.tenant()
    key = Ed25519PrivateKey.generate()
    reg = (
        await t.owner.post(
            "/api/v1/signing-keys", {"public_key": public_key_text(key.public_key())}
        )
    ).ok(201)
    v1 = bundle("authored", t.root, 1, denied_packages=[pkg("telnet")])
    assert (await t.owner.post("/api/v1/policies", signed(key, reg["key_id"], v1))).ok(201)[
        "signed_by"
    ] == "author"
    v2 = bundle("authored", t.root, 2, denied_packages=[])
    forged = signed(key, reg["key_id"], v1) | {"bundle": v2["bundle"]}  # signature of v1 on v2
    refused = await t.owner.post("/api/v1/policies", forged)
    assert refused.status == 422 and refused.body["error"]["field"] == "signature"
    assert "previous version stays active" in refused.body["error"]["message"]
    other = Ed25519PrivateKey.generate()
    unknown = await t.owner.post("/api/v1/policies", signed(other, "ed25519:0000", v2))
    assert unknown.status == 422
    policies = (await t.owner.get("/api/v1/policies")).ok()["items"]
    assert [(p["policy_id"], p["active_version"]) for p in policies] == [("authored", 1)]
    eff = (await t.owner.get(f"/api/v1/scopes/{t.root}/effective-policy")).ok()["policy"]
    assert [r["name"] for r in eff["rules"]] == ["telnet"]


async def test_tampered_stored_bundle_is_skipped(cp: ControlPlane) -> None:
    t = await cp.tenant()
    (
        await t.owner.post(
            "/api/v1/policies", bundle("p", t.root, 1, denied_packages=[pkg("telnet")])
        )
    ).ok(201)
    (
        await t.owner.post("/api/v1/policies", bundle("p", t.root, 2, denied_packages=[pkg("ftp")]))
    ).ok(201)
    async with cp.state.sessions.begin() as session:
        tampered = bundle("p", t.root, 2, denied_packages=[])["bundle"]
        await session.execute(
            update(PolicyBundle)
            .where(
                PolicyBundle.tenant_id == t.id,
                PolicyBundle.policy_version == 2,
            )
            .values(content=tampered)
        )
    # a new scope bumps the tenant's policy revision, so the cache reloads from storage
    await t.scope(t.root, "department", "after-tamper")
    listed = (await t.owner.get("/api/v1/policies")).ok()["items"][0]
    assert listed["active_version"] == 1 and listed["rejected_versions"] == [2]
    stored = (await t.owner.get("/api/v1/policies/p/versions/2")).ok()
    assert not stored["verified"] and not stored["active"]
    eff = (await t.owner.get(f"/api/v1/scopes/{t.root}/effective-policy")).ok()
    assert [r["name"] for r in eff["policy"]["rules"]] == ["telnet"]
    assert eff["rejected_bundles"] == ["p@2"]


@pytest.mark.parametrize("field", ["scope_bindings", "policy_version"])
async def test_invalid_bundles_name_the_field(cp: ControlPlane, field: str) -> None:
    t = await cp.tenant()
    body = bundle("x", t.root)
    body["bundle"][field] = [] if field == "scope_bindings" else 0
    r = await t.owner.post("/api/v1/policies", body)
    assert r.status == 422 and r.body["error"]["field"] == f"bundle.{field}"
    unknown = bundle("x", t.root) | {"extra": True}
    r = await t.owner.post("/api/v1/policies", unknown)
    assert r.status == 422 and "unknown field" in r.body["error"]["message"]
