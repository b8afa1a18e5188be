"""Audit events through the HTTP API: listing, export, and chain verification against tampering."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rfc8785
from sqlalchemy import delete, insert, select, update

from controlplane.events import append_event
from controlplane.models import Event
from tests.controlplane.client import ControlPlane, Tenant

GENESIS = "0" * 64


class Abandoned(Exception):
    """Raised inside a transaction to roll it back."""


async def tenant_with_events(cp: ControlPlane) -> Tenant:
    """A tenant whose chain holds five events: tenant, two scopes, a principal and its token."""
    t = await cp.tenant()
    dept = await t.scope(t.root, "department", "engineering")
    await t.scope(dept, "team", "platform")
    await t.principal("audra", ["auditor"])
    return t


async def verify(t: Tenant) -> dict[str, Any]:
    body: dict[str, Any] = (await t.owner.get("/api/v1/events/verify")).ok()
    return body


async def export(t: Tenant, **params: Any) -> list[dict[str, Any]]:
    response = await t.owner.get("/api/v1/events/export", params=params or None)
    assert response.status == 200, response.body
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    text: str = response.body
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def recompute(event: dict[str, Any]) -> str:
    """The hash as a client computes it from an exported line, independently of the service."""
    fields = {k: v for k, v in event.items() if k not in ("prev_hash", "hash")}
    payload = event["prev_hash"].encode() + b"\n" + rfc8785.dumps(fields)
    return hashlib.sha256(payload).hexdigest()


async def tamper(cp: ControlPlane, *statements: Any) -> None:
    """Change stored rows behind the service's back, as someone with database access could."""
    async with cp.state.writing() as session:
        for statement in statements:
            await session.execute(statement.execution_options(synchronize_session=False))


def at(t: Tenant, seq: int) -> Any:
    return (Event.tenant_id == t.id) & (Event.seq == seq)


async def test_events_are_listed_oldest_first_with_cursor_and_filters(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    first = (await t.owner.get("/api/v1/events", params={"limit": 4})).ok()
    assert [e["seq"] for e in first["items"]] == [1, 2, 3, 4]
    rest = (
        await t.owner.get("/api/v1/events", params={"limit": 4, "cursor": first["next_cursor"]})
    ).ok()
    assert [e["seq"] for e in rest["items"]] == [5] and rest["next_cursor"] is None
    event = first["items"][0]
    assert event["tenant_id"] == t.id and event["action"] == "tenant.create"
    assert event["prev_hash"] == GENESIS and event["hash"] == recompute(event)
    assert {"actor", "correlation_id", "timestamp", "outcome", "policy_version"} <= set(event)

    scopes = (await t.owner.get("/api/v1/events", params={"type": "scope_changed"})).ok()
    assert [e["action"] for e in scopes["items"]] == ["scope.create", "scope.create"]
    one = scopes["items"][1]["scope_id"]
    by_scope = (await t.owner.get("/api/v1/events", params={"scope_id": one})).ok()
    assert [e["seq"] for e in by_scope["items"]] == [scopes["items"][1]["seq"]]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await t.owner.get("/api/v1/events", params={"since": later})).ok()["items"] == []
    earlier = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert len((await t.owner.get("/api/v1/events", params={"since": earlier})).ok()["items"]) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2025-01-01T00:00:00"},  # no zone
        {"type": "Not A Type"},
        {"cursor": "!!"},
        {"since": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"cursor": "bm90LWEtc2Vx"},  # a cursor that decodes, but to no seq
        {"cursor": "wrI"},  # decodes to a superscript two: a digit, but not a seq
        {"colour": "blue"},
    ],
)
async def test_bad_event_queries_are_400(cp: ControlPlane, params: dict[str, str]) -> None:
    t = await cp.tenant()
    response = await t.owner.get("/api/v1/events", params=params)
    assert response.status == 400, response.body


async def test_each_tenant_sees_only_its_own_events(cp: ControlPlane) -> None:
    a, b = await tenant_with_events(cp), await cp.tenant()
    listed = (await b.owner.get("/api/v1/events", params={"limit": 1000})).ok()["items"]
    assert listed and {e["tenant_id"] for e in listed} == {b.id}
    assert {e["tenant_id"] for e in await export(b)} == {b.id}
    report = await verify(b)
    assert report["ok"] and report["checked"] == report["head_seq"] == len(listed)
    # A's events do not leak through filters that name A's objects either.
    a_scope = (await a.owner.get("/api/v1/events", params={"type": "scope_changed"})).ok()
    scope_id = a_scope["items"][0]["scope_id"]
    assert (await b.owner.get("/api/v1/events", params={"scope_id": scope_id})).ok()["items"] == []


async def test_audit_permissions(cp: ControlPlane) -> None:
    t = await cp.tenant()
    viewer = await t.principal("vic", ["viewer"])
    ops = await t.principal("opal", ["endpoint_ops"])
    auditor = await t.principal("audra", ["auditor"])
    assert (await viewer.get("/api/v1/events")).status == 403
    assert (await ops.get("/api/v1/events")).status == 200
    assert (await ops.get("/api/v1/events/export")).status == 403
    assert (await ops.get("/api/v1/events/verify")).status == 403
    assert (await auditor.get("/api/v1/events/export")).status == 200
    assert (await auditor.get("/api/v1/events/verify")).ok()["ok"] is True
    assert (await t.owner.as_(None).get("/api/v1/events")).status == 401


async def test_export_is_json_lines_whose_hashes_chain(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    lines = await export(t)
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5]
    prev = GENESIS
    for event in lines:
        assert event["prev_hash"] == prev
        assert recompute(event) == event["hash"]
        prev = event["hash"]
    assert [e["seq"] for e in await export(t, since_seq=3)] == [4, 5]
    assert await export(t, since_seq=5) == []
    assert (await t.owner.get("/api/v1/events/export", params={"since_seq": -1})).status == 400


async def test_verify_passes_an_untouched_chain(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    assert await verify(t) == {
        "ok": True,
        "checked": 5,
        "head_seq": 5,
        "first_bad_seq": None,
        "problem": None,
    }


async def test_verify_detects_an_edited_event(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    await tamper(cp, update(Event).where(at(t, 3)).values(outcome="denied"))
    report = await verify(t)
    assert not report["ok"] and report["first_bad_seq"] == 3
    assert "does not match its fields" in report["problem"]


async def test_verify_detects_an_edit_whose_hash_was_recomputed(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    edited = (await export(t))[2] | {"actor": "someone-else"}
    forged = recompute(edited)
    await tamper(cp, update(Event).where(at(t, 3)).values(actor="someone-else", hash=forged))
    report = await verify(t)
    assert not report["ok"] and report["first_bad_seq"] == 4
    assert "prev_hash is not the hash of event 3" in report["problem"]


async def test_verify_detects_reordered_events(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    await tamper(
        cp,
        update(Event).where(at(t, 2)).values(seq=-2),
        update(Event).where(at(t, 3)).values(seq=2),
        update(Event).where(at(t, -2)).values(seq=3),
    )
    report = await verify(t)
    assert not report["ok"] and report["first_bad_seq"] == 2
    assert report["checked"] == 2


async def test_verify_detects_a_deleted_middle_event(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    await tamper(cp, delete(Event).where(at(t, 4)))
    report = await verify(t)
    assert not report["ok"] and report["first_bad_seq"] == 4
    assert report["problem"] == "event 4 is missing (deleted)"


async def test_verify_detects_a_deleted_newest_event(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    await tamper(cp, delete(Event).where(at(t, 5)))
    report = await verify(t)
    assert not report["ok"] and report["first_bad_seq"] == 5 and report["head_seq"] == 5
    assert "newest deleted" in report["problem"]


async def test_verify_detects_an_event_inserted_behind_the_head(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    last = (await export(t))[-1]
    extra = last | {"seq": 6, "prev_hash": last["hash"], "correlation_id": "forged"}
    extra["hash"] = recompute(extra)
    row = {k: v for k, v in extra.items() if k != "timestamp"}
    row["timestamp"] = datetime.fromisoformat(extra["timestamp"])
    async with cp.state.writing() as session:
        await session.execute(insert(Event).values(row))
    report = await verify(t)
    assert not report["ok"] and report["first_bad_seq"] == 6
    assert "after the chain head" in report["problem"]


async def test_concurrent_appends_keep_one_valid_chain(cp: ControlPlane) -> None:
    t = await cp.tenant()
    created = await asyncio.gather(*(t.scope(t.root, "department", f"dept-{n}") for n in range(12)))
    assert len(set(created)) == 12
    report = await verify(t)
    assert report["ok"] and report["head_seq"] == 13


async def append_then_roll_back(cp: ControlPlane, tenant_id: str) -> None:
    async with cp.state.writing() as session:
        await append_event(
            session,
            tenant_id=tenant_id,
            type="access_changed",
            action="test.rollback",
            outcome="success",
            actor="test",
            correlation_id="rolled-back",
        )
        raise Abandoned


async def test_a_rolled_back_append_does_not_break_the_next_one(cp: ControlPlane) -> None:
    t = await tenant_with_events(cp)
    # Appending then rolling back leaves this process's remembered head one event ahead of the
    # stored one; the next append must notice and chain onto the stored head.
    with pytest.raises(Abandoned):
        await append_then_roll_back(cp, t.id)
    await t.scope(t.root, "department", "after-rollback")
    report = await verify(t)
    assert report["ok"] and report["head_seq"] == 6
    async with cp.state.sessions() as session:
        actions = (
            await session.execute(select(Event.action).where(Event.tenant_id == t.id))
        ).scalars()
        assert "test.rollback" not in set(actions)


async def test_audit_trail_needs_an_organization_wide_principal(cp: ControlPlane) -> None:
    t = await cp.tenant()
    dept = await t.scope(t.root, "department", "finance")
    scoped = await t.principal("dept-auditor", ["auditor"], dept)
    for path in ("/api/v1/events", "/api/v1/events/verify", "/api/v1/events/export"):
        refused = await scoped.get(path)
        assert refused.status == 403, path
        assert "whole organization" in refused.body["error"]["message"]
    tenant_auditor = await t.principal("org-auditor", ["auditor"])
    assert (await tenant_auditor.get("/api/v1/events/verify")).ok()["ok"] is True
