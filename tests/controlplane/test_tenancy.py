"""Tenancy and access through the HTTP API: tenants, scopes, principals, tokens, acting-as."""

from __future__ import annotations

from tests.controlplane.client import Client, ControlPlane


async def test_tenant_bootstrap_requires_platform_token(cp: ControlPlane) -> None:
    denied = await cp.client.as_("not-the-token").post("/api/v1/tenants", {"name": "x"})
    assert denied.status == 401
    assert denied.body["error"]["code"] == "unauthorized"
    t = await cp.tenant()
    me = (await t.owner.get("/api/v1/whoami")).ok()
    assert me["roles"] == ["owner"] and me["tenant_id"] == t.id


async def test_scope_tree_levels_are_ordered(cp: ControlPlane) -> None:
    t = await cp.tenant()
    dept = await t.scope(t.root, "department", "engineering")
    team = await t.scope(dept, "team", "platform")
    bad = await t.owner.post(
        "/api/v1/scopes", {"parent_id": team, "level": "department", "name": "nope"}
    )
    assert bad.status == 422 and bad.body["error"]["field"] == "level"
    dup = await t.owner.post(
        "/api/v1/scopes", {"parent_id": dept, "level": "team", "name": "platform"}
    )
    assert dup.status == 409


async def test_cross_tenant_reads_are_refused(cp: ControlPlane) -> None:
    a, b = await cp.tenant(), await cp.tenant()
    dept = await a.scope(a.root, "department", "secret-dept")
    seen = await b.owner.get(f"/api/v1/scopes/{dept}")
    assert seen.status == 404
    listed = (await b.owner.get("/api/v1/scopes")).ok()
    assert dept not in {s["id"] for s in listed["items"]}


async def test_scope_subtree_limits_a_principal(cp: ControlPlane) -> None:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "engineering")
    fin = await t.scope(t.root, "department", "finance")
    eng_admin = await t.principal("eng-admin", ["platform_admin"], eng)
    assert (
        await eng_admin.post("/api/v1/scopes", {"parent_id": eng, "level": "team", "name": "web"})
    ).status == 201
    refused = await eng_admin.post(
        "/api/v1/scopes", {"parent_id": fin, "level": "team", "name": "ap"}
    )
    assert refused.status == 403
    assert (await eng_admin.get(f"/api/v1/scopes/{fin}")).status == 403


async def test_roles_gate_actions(cp: ControlPlane) -> None:
    t = await cp.tenant()
    viewer = await t.principal("vera", ["viewer"])
    r = await viewer.post(
        "/api/v1/scopes", {"parent_id": t.root, "level": "department", "name": "x"}
    )
    assert r.status == 403
    assert "grants scope.write" in r.body["error"]["message"]


async def test_gateway_acts_on_behalf_of_a_named_principal(cp: ControlPlane) -> None:
    t = await cp.tenant()
    await t.principal("ana", ["viewer"])
    gateway = await t.principal(
        "goodbot-gateway", ["viewer"], kind="service", may_act_for_others=True
    )
    as_ana = (await gateway.get("/api/v1/whoami", headers={"X-Act-As": "ana"})).ok()
    assert as_ana["name"] == "ana" and as_ana["via"] == "goodbot-gateway"
    plain = await t.principal("bob", ["viewer"])
    r = await plain.get("/api/v1/whoami", headers={"X-Act-As": "ana"})
    assert r.status == 403
    unknown = await gateway.get("/api/v1/whoami", headers={"X-Act-As": "nobody"})
    assert unknown.status == 403


async def test_revoked_token_is_refused(cp: ControlPlane) -> None:
    t = await cp.tenant()
    created = (
        await t.owner.post(
            "/api/v1/principals", {"name": "tmp", "roles": ["viewer"], "scope_id": t.root}
        )
    ).ok(201)
    tok = (await t.owner.post(f"/api/v1/principals/{created['id']}/tokens", {"name": "short"})).ok(
        201
    )
    c = t.owner.as_(tok["token"])
    assert (await c.get("/api/v1/whoami")).status == 200
    assert (await t.owner.request("DELETE", f"/api/v1/tokens/{tok['id']}")).status == 204
    assert (await c.get("/api/v1/whoami")).status == 401


async def test_scopes_filter_by_exact_name_with_paging_and_confinement(cp: ControlPlane) -> None:
    t = await cp.tenant()
    eng = await t.scope(t.root, "department", "Engineering")
    fin = await t.scope(t.root, "department", "finance")
    # Teams under different departments may share a name.
    eng_platform = await t.scope(eng, "team", "Platform")
    fin_platform = await t.scope(fin, "team", "platform")
    await t.scope(eng, "team", "platform-tools")

    async def named(client: Client, name: str, **params: str) -> list[str]:
        body = (await client.get("/api/v1/scopes", params={"name": name, **params})).ok()
        return [s["id"] for s in body["items"]]

    both = sorted([eng_platform, fin_platform])
    assert await named(t.owner, "PLATFORM") == both  # case-insensitive, not a prefix
    first = (await t.owner.get("/api/v1/scopes", params={"name": "platform", "limit": "1"})).ok()
    rest = (
        await t.owner.get(
            "/api/v1/scopes",
            params={"name": "platform", "limit": "1", "cursor": first["next_cursor"]},
        )
    ).ok()
    assert [s["id"] for s in first["items"] + rest["items"]] == both
    assert rest["next_cursor"] is None
    assert await named(t.owner, "platform", parent_id=fin) == [fin_platform]
    assert await named(t.owner, "engineering") == [eng]
    eng_admin = await t.principal("eng-admin", ["platform_admin"], eng)
    assert await named(eng_admin, "platform") == [eng_platform]  # only the caller's subtree
