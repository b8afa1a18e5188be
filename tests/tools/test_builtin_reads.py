"""The read-only built-in tools, and the proposals refused before any change, on the demo."""

from __future__ import annotations

import re

import pytest

from tests.demo import DemoControlPlane
from tests.tools.builtin_support import context, propose, read, table_rows
from tools.errors import NotAllowedError
from tools.registry import ToolInputError


async def test_pending_approvals_lists_what_a_cab_approver_may_decide(
    shared_demo_cp: DemoControlPlane,
) -> None:
    for approver in ("ana", "li"):
        async with context(shared_demo_cp, approver) as ctx:
            result = await read(ctx, "pending_approvals")
        items = result.data["items"]
        summaries = sorted(i["summary"] for i in items)
        assert len(items) == 2, summaries
        assert "crowdstrike-falcon 7.18.0 into ring 1 (canary)" in summaries[0]
        assert "zoom 6.2.5 into ring 2 (pilot)" in summaries[1]
        assert {i["requested_by"] for i in items} == {"omar"}
        zoom = next(i for i in items if "zoom" in i["summary"])
        assert zoom["risk_score"] == 52.75 and zoom["kind"] == "cab_approval"
        assert "decide" not in zoom
        assert result.data["principal"] == approver
        assert f"| {zoom['id']} | publish zoom 6.2.5 into ring 2 (pilot)" in result.text
        assert result.text.startswith(f"2 waiting for a decision by “{approver}”")
    # omar asked for both; separation of duties keeps his own requests off his list.
    async with context(shared_demo_cp, "omar") as ctx:
        mine = await read(ctx, "pending_approvals")
    assert mine.data == {"principal": "omar", "items": [], "truncated": False}
    assert mine.text == "Nothing is waiting for a decision by “omar”."


async def test_device_compliance_by_name_or_id(shared_demo_cp: DemoControlPlane) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        by_name = await read(ctx, "device_compliance", device="mac-00001")
        by_id = await read(ctx, "device_compliance", device="dev_000001")
        upper = await read(ctx, "device_compliance", device="MAC-00001")
        with pytest.raises(ToolInputError, match="no device named 'mac-99999'"):
            await read(ctx, "device_compliance", device="mac-99999")
        with pytest.raises(ToolInputError, match="no device with id 'dev_999999'"):
            await read(ctx, "device_compliance", device="dev_999999")
    assert by_name.data == by_id.data == upper.data
    device, record = by_name.data["device"], by_name.data["compliance"]
    assert (device["id"], device["name"]) == ("dev_000001", "mac-00001")
    assert record["device_id"] == "dev_000001"
    assert by_name.scope_path[0] == "scp_contoso"
    assert by_name.scope_path[-1] == device["scope_ids"][0]
    [row] = table_rows(by_name.text, "mac-00001")
    assert row[3] == record["state"]
    for violation in record["violations"]:
        assert table_rows(by_name.text, violation["category"]), violation


@pytest.mark.parametrize(
    "said",
    ["web", "web team", "the web team", "The Web Team", "scp_engineering_web", "the web"],
)
async def test_scope_drift_resolves_a_scope_as_people_name_it(
    shared_demo_cp: DemoControlPlane, said: str
) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        result = await read(ctx, "scope_drift", scope=said)
    assert result.data["scope"]["id"] == "scp_engineering_web"
    assert result.scope_path == ("scp_contoso", "scp_engineering", "scp_engineering_web")
    counts = result.data["compliance"]
    assert sum(counts["states"].values()) == counts["devices"] > 0
    assert set(counts["categories"]) >= {"missing_required", "present_denied"}
    [row] = table_rows(result.text, "compliant")
    assert row == ["compliant", str(counts["states"]["compliant"])]
    [row] = table_rows(result.text, "missing_required")
    assert row == ["missing_required", str(counts["categories"]["missing_required"])]


async def test_scope_drift_of_a_department_and_refusals(shared_demo_cp: DemoControlPlane) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        engineering = await read(ctx, "scope_drift", scope="the engineering department")
        web = await read(ctx, "scope_drift", scope="web")
        with pytest.raises(ToolInputError) as ambiguous:
            await read(ctx, "scope_drift", scope="workstations")
        with pytest.raises(ToolInputError, match="no department scope named 'web'"):
            await read(ctx, "scope_drift", scope="web department")
        with pytest.raises(ToolInputError, match="no scope named 'marketing'"):
            await read(ctx, "scope_drift", scope="marketing")
        with pytest.raises(ToolInputError, match="no scope with id 'scp_nope'"):
            await read(ctx, "scope_drift", scope="scp_nope")
    assert engineering.data["scope"]["level"] == "department"
    assert engineering.scope_path == ("scp_contoso", "scp_engineering")
    assert engineering.data["compliance"]["devices"] > web.data["compliance"]["devices"]
    message = str(ambiguous.value)
    assert "could mean several scopes" in message
    for team in ("web", "data", "platform"):
        assert f"scp_engineering_{team}_workstations (environment workstations under team" in (
            message
        )


async def test_rollout_status_lists_every_rollout(shared_demo_cp: DemoControlPlane) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        result = await read(ctx, "rollout_status")
    by_app = {(i["app"], i["version"]): i for i in result.data["rollouts"]}
    assert set(by_app) == {
        ("crowdstrike-falcon", "7.18.0"),
        ("firefox", "131.0.3"),
        ("firefox", "132.0.0"),
        ("google-chrome", "131.0.6778"),
        ("zoom", "6.2.5"),
    }
    assert by_app[("firefox", "131.0.3")]["ring_name"] == "pilot"
    assert by_app[("firefox", "131.0.3")]["status"] == "Progressing"
    paused = by_app[("firefox", "132.0.0")]
    assert (paused["ring_name"], paused["status"]) == ("canary", "Paused")
    assert paused["failed_gates"] == ["install_success_rate"]
    assert by_app[("zoom", "6.2.5")]["failed_gates"] == ["cab_approval"]
    assert by_app[("google-chrome", "131.0.6778")]["failed_gates"] == []
    [row] = table_rows(result.text, "google-chrome")
    assert row[1:6] == ["131.0.6778", "canary (ring 1)", "Healthy", "active", "none"]
    [row] = table_rows(result.text, "firefox") and [
        r for r in table_rows(result.text, "firefox") if r[1] == "132.0.0"
    ]
    assert row[5] == "install_success_rate" and "install_success_rate" in row[6]


async def test_rollout_status_of_an_app_measures_every_gate_now(
    shared_demo_cp: DemoControlPlane,
) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        chrome = await read(ctx, "rollout_status", app="chrome")
        firefox = await read(ctx, "rollout_status", app="Firefox", version="132")
        both = await read(ctx, "rollout_status", app="firefox")
    [item] = chrome.data["rollouts"]
    assert chrome.data["app"]["name"] == "google-chrome"
    assert item["gates_live"] and item["gates"]
    assert {g["verdict"] for g in item["gates"]} == {"passed"}
    assert chrome.scope_path == ("scp_contoso",)
    assert "Gates of google-chrome 131.0.6778 in canary (ring 1), measured now:" in chrome.text
    [row] = table_rows(chrome.text, "cab_approval")
    assert row[1:3] == ["readiness", "passed"]
    [paused] = firefox.data["rollouts"]
    assert paused["version"] == "132.0.0" and paused["intent_state"] == "paused"
    [row] = table_rows(firefox.text, "install_success_rate")
    assert row[1:3] == ["health", "failed"] and "needs 98.00%" in row[5]
    assert sorted(i["version"] for i in both.data["rollouts"]) == ["131.0.3", "132.0.0"]


async def test_a_principal_below_the_target_scope_gets_its_path(
    shared_demo_cp: DemoControlPlane,
) -> None:
    # sam (engineering) may read rollouts that target the organization, not the scope itself.
    async with context(shared_demo_cp, "sam") as ctx:
        result = await read(ctx, "rollout_status", app="google-chrome")
    assert result.scope_path == ("scp_contoso",)


async def test_apps_resolve_by_name_alias_or_id_and_refuse_ambiguity(
    shared_demo_cp: DemoControlPlane,
) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        names = {}
        for said in ("google-chrome", "Google Chrome", "chrome", "GOOGLE"):
            names[said] = (await read(ctx, "explain_risk", app=said)).data["app"]
        app_id = names["chrome"]["id"]
        by_id = (await read(ctx, "explain_risk", app=app_id)).data["app"]
        falcon = (await read(ctx, "explain_risk", app="falcon")).data["app"]
        with pytest.raises(ToolInputError, match="'t' could mean jetbrains-toolbox, terraform"):
            await read(ctx, "rollout_status", app="t")
        with pytest.raises(ToolInputError) as missing:
            await read(ctx, "rollout_status", app="safari")
        with pytest.raises(
            ToolInputError, match=re.escape("firefox 13 could mean 131.0.3, 132.0.0")
        ):
            await read(ctx, "rollout_status", app="firefox", version="13")
        with pytest.raises(ToolInputError, match="no application with id 'app_missing'"):
            await read(ctx, "rollout_status", app="app_missing")
        with pytest.raises(ToolInputError, match=re.escape("terraform 1.10.3 has no rollout")):
            await read(ctx, "rollout_status", app="terraform", version="1.10")
    assert {a["name"] for a in names.values()} == {"google-chrome"}
    assert by_id == names["chrome"]
    assert falcon["name"] == "crowdstrike-falcon"
    assert str(missing.value).startswith("no application matches 'safari'; the catalog has ")
    assert "firefox" in str(missing.value) and "zoom" in str(missing.value)


async def test_explain_risk_shows_each_factor_and_each_ring(
    shared_demo_cp: DemoControlPlane,
) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        zoom = await read(ctx, "explain_risk", app="zoom")
        pinned = await read(ctx, "explain_risk", app="zoom", version="6.2")
        firefox = await read(ctx, "explain_risk", app="firefox", version="131")
        with pytest.raises(ToolInputError, match=r"which version of firefox\? It has"):
            await read(ctx, "explain_risk", app="firefox")
    risk = zoom.data["risk"]
    assert risk["score"] == 52.75 and pinned.data["risk"] == risk
    assert zoom.data["version"]["version"] == "6.2.5"
    assert "Risk of zoom 6.2.5: **52.75** against a CAB threshold of 50" in zoom.text
    assert zoom.scope_path == ("scp_contoso",)
    [row] = table_rows(zoom.text, "privilege_impact")
    assert row[1:4] == ["admin_required", "20", "20"]
    assert table_rows(zoom.text, "pilot (ring 2)")[0][1] == "required"
    assert table_rows(zoom.text, "canary (ring 1)")[0][1] == "no"
    assert "Justification given: “Zoom's new installer" in zoom.text
    assert firefox.data["version"]["version"] == "131.0.3"


async def test_recent_events_newest_first_for_a_scope_or_device(
    shared_demo_cp: DemoControlPlane,
) -> None:
    async with context(shared_demo_cp, "aud") as ctx:
        latest = await read(ctx, "recent_events", limit=3)
        device = await read(ctx, "recent_events", device="dev_000230", limit=5)
        by_name = await read(ctx, "recent_events", device="mac-00230", limit=5)
        scope = await read(ctx, "recent_events", scope="the contoso organization")
        # Nothing is recorded against the web team itself (its devices' events name them):
        # every window up to the start of the chain is read, and none is found.
        quiet = await read(ctx, "recent_events", scope="web")
        for bad in (0, 51):
            with pytest.raises(ToolInputError, match="limit must be between 1 and 50"):
                await read(ctx, "recent_events", limit=bad)
    seqs = [e["seq"] for e in latest.data["events"]]
    assert len(seqs) == 3 and seqs == sorted(seqs, reverse=True)
    assert latest.scope_path == ()
    assert latest.text.startswith("The 3 newest events, newest first:")
    assert table_rows(latest.text, str(seqs[0]))
    events = device.data["events"]
    assert 1 <= len(events) <= 5 and {e["device_id"] for e in events} == {"dev_000230"}
    assert by_name.data == device.data
    assert device.scope_path[0] == "scp_contoso" and len(device.scope_path) > 1
    assert {e["scope_id"] for e in scope.data["events"]} == {"scp_contoso"}
    assert len(scope.data["events"]) == 10 and scope.scope_path == ("scp_contoso",)
    assert quiet.data == {"events": []}
    assert quiet.text == "No events for scope scp_engineering_web."
    assert quiet.scope_path == ("scp_contoso", "scp_engineering", "scp_engineering_web")
    # The audit trail needs an organization-wide principal that may read events.
    async with context(shared_demo_cp, "vera") as ctx:
        with pytest.raises(NotAllowedError, match=re.escape("grants event.read")):
            await read(ctx, "recent_events")


async def test_proposals_refused_before_any_change(shared_demo_cp: DemoControlPlane) -> None:
    async with context(shared_demo_cp, "omar") as ctx:
        with pytest.raises(ToolInputError) as several:
            await propose(ctx, "promote_rollout", app="firefox")
        with pytest.raises(ToolInputError, match=r"firefox 132\.0\.0 is paused \(“gates failed"):
            await propose(ctx, "promote_rollout", app="firefox", version="132")
        with pytest.raises(ToolInputError, match=r"only to the next ring, pilot \(ring 2\)"):
            await propose(ctx, "promote_rollout", app="chrome", to_ring="department")
        with pytest.raises(ToolInputError, match="not a ring"):
            await propose(ctx, "promote_rollout", app="chrome", to_ring="prod")
        with pytest.raises(
            ToolInputError, match=re.escape("firefox 132.0.0 is paused already: “gates")
        ):
            await propose(ctx, "pause_rollout", app="firefox", version="132.0.0")
        with pytest.raises(
            ToolInputError, match=re.escape("google-chrome 131.0.6778 is not paused")
        ):
            await propose(ctx, "resume_rollout", app="chrome")
        with pytest.raises(ToolInputError, match="give a reason"):
            await propose(ctx, "rollback_rollout", app="chrome", reason="  ")
        with pytest.raises(ToolInputError, match="terraform has no rollout in flight"):
            await propose(ctx, "pause_rollout", app="terraform")
        ok = await propose(ctx, "promote_rollout", app="chrome", to_ring="ring 2")
    message = str(several.value)
    assert message.startswith("firefox has several rollouts: 131.0.3 in pilot (ring 2)")
    assert "132.0.0 in canary (ring 1), Paused" in message and message.endswith("name the version")
    assert ok.arguments["to_ring"] == 2 and ok.scope_path == ("scp_contoso",)


async def test_decide_approval_refuses_what_the_principal_may_not_decide(
    shared_demo_cp: DemoControlPlane,
) -> None:
    async with context(shared_demo_cp, "ana") as ctx:
        pending = (await read(ctx, "pending_approvals")).data["items"]
        zoom = next(i["id"] for i in pending if "zoom" in i["summary"])
        proposal = await propose(ctx, "decide_approval", approval_id=zoom, decision="deny")
        with pytest.raises(ToolInputError, match="at most 2000"):
            await propose(
                ctx, "decide_approval", approval_id=zoom, decision="approve", comment="x" * 2001
            )
    assert proposal.arguments == {
        "approval_id": zoom,
        "kind": "cab_approval",
        "decision": "deny",
        "comment": "",
    }
    assert re.fullmatch(
        rf"Deny CAB request {zoom}: “CAB approval to publish zoom .*”", proposal.summary
    )
    assert proposal.scope_path == ("scp_contoso",)
    async with context(shared_demo_cp, "omar") as ctx:
        with pytest.raises(ToolInputError, match=r"you requested approval .*separation of duties"):
            await propose(ctx, "decide_approval", approval_id=zoom, decision="approve")
        with pytest.raises(ToolInputError, match="no approval 'apr_missing'"):
            await propose(ctx, "decide_approval", approval_id="apr_missing", decision="approve")
    # aud (auditor) sees the request but lacks the role it needs.
    async with context(shared_demo_cp, "aud") as ctx:
        with pytest.raises(
            ToolInputError, match=r"not among what you may decide now.*cab_approver"
        ):
            await propose(ctx, "decide_approval", approval_id=zoom, decision="approve")
    # sam (engineering) cannot see an approval for the whole organization at all.
    async with context(shared_demo_cp, "sam") as ctx:
        with pytest.raises(ToolInputError, match=r"no approval 'apr_\w+' that you can see"):
            await propose(ctx, "decide_approval", approval_id=zoom, decision="approve")
