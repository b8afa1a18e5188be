"""API conventions: every error status produced by a real request, in the one error shape."""

from __future__ import annotations

import pytest

from tests.controlplane.client import ControlPlane, start_control_plane


def assert_shape(body: dict[str, object], code: str) -> None:
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert error["message"] and error["request_id"]


async def test_each_error_status(cp: ControlPlane) -> None:
    t = await cp.tenant()
    viewer = await t.principal("vic", ["viewer"])

    r = await t.owner.post(
        "/api/v1/scopes", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400 and "not valid JSON" in r.body["error"]["message"]
    assert_shape(r.body, "bad_request")

    r = await t.owner.get("/api/v1/scopes", params={"cursor": "%%%"})
    assert r.status == 400 and r.body["error"]["field"] == "cursor"

    r = await t.owner.get("/api/v1/scopes", params={"bogus": "1"})
    assert r.status == 400 and r.body["error"]["field"] == "bogus"

    r = await cp.client.get("/api/v1/whoami")
    assert r.status == 401 and r.body["error"]["field"] == "Authorization"
    r = await cp.client.as_("gbt_forged").get("/api/v1/whoami")
    assert r.status == 401

    r = await viewer.post(
        "/api/v1/scopes", {"parent_id": t.root, "level": "department", "name": "x"}
    )
    assert r.status == 403
    assert_shape(r.body, "forbidden")

    r = await t.owner.get("/api/v1/devices/dev_nope")
    assert r.status == 404 and r.body["error"]["field"] == "device_id"
    r = await t.owner.get("/api/v1/no-such-route")
    assert_shape(r.body, "not_found")

    await t.scope(t.root, "department", "dup")
    r = await t.owner.post(
        "/api/v1/scopes", {"parent_id": t.root, "level": "department", "name": "dup"}
    )
    assert r.status == 409
    assert_shape(r.body, "conflict")

    r = await t.owner.post(
        "/api/v1/scopes", {"parent_id": t.root, "level": "department", "name": "x", "colour": "red"}
    )
    assert r.status == 422 and r.body["error"]["field"] == "colour"
    assert "unknown field" in r.body["error"]["message"]

    r = await t.owner.post(
        "/api/v1/scopes", data=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status == 415

    r = await t.owner.request("DELETE", "/api/v1/scopes")
    assert r.status == 405 and "GET" in r.headers["Allow"]

    given = await t.owner.get("/api/v1/devices/dev_nope", headers={"X-Request-Id": "trace-42"})
    assert given.body["error"]["request_id"] == "trace-42" == given.headers["X-Request-Id"]


async def test_payload_too_large_names_the_limit(
    cp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOODBOT_CP_MAX_BODY_BYTES", "4096")
    async with start_control_plane(cp_env) as cp:
        t = await cp.tenant()
        r = await t.owner.post(
            "/api/v1/scopes", {"parent_id": t.root, "level": "department", "name": "x" * 10_000}
        )
        assert r.status == 413
        assert_shape(r.body, "payload_too_large")
        assert "4096" in r.body["error"]["message"]


async def test_rate_limit_answers_429_with_retry_after(
    cp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOODBOT_CP_RATE_LIMIT_PER_SECOND", "0.5")
    monkeypatch.setenv("GOODBOT_CP_RATE_LIMIT_BURST", "3")
    async with start_control_plane(cp_env) as cp:
        t = await cp.tenant()
        statuses = [(await t.owner.get("/api/v1/whoami")).status for _ in range(3)]
        assert statuses == [200, 200, 200]
        r = await t.owner.get("/api/v1/whoami")
        assert r.status == 429
        assert_shape(r.body, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1


async def test_nul_characters_are_refused_not_5xx(cp: ControlPlane) -> None:
    t = await cp.tenant()
    r = await t.owner.get("/api/v1/scopes/a%00b")
    assert r.status == 404
    r = await t.owner.get("/api/v1/scopes", params={"parent_id": "a\x00b"})
    assert r.status == 400 and r.body["error"]["field"] == "parent_id"
    r = await t.owner.post(
        "/api/v1/scopes", {"parent_id": t.root, "level": "department", "name": "x\x00y"}
    )
    assert r.status == 422 and r.body["error"]["field"] == "name"
