"""The control-plane client's single-object reads the built-in tools resolve names with."""

from __future__ import annotations

from typing import Any

import pytest

from tests.demo import DemoControlPlane
from tools.controlplane import ControlPlaneClient
from tools.errors import InvalidError, NotAllowedError, NotFoundError


async def test_single_objects_by_id(shared_demo_cp: DemoControlPlane) -> None:
    async with ControlPlaneClient(shared_demo_cp.url, shared_demo_cp.gateway_token) as cp:
        scope = await cp.scope("ana", "scp_engineering_web")
        device = await cp.device("ana", "dev_000001")
        [listed] = await cp.apps("ana", "firefox")
        app = await cp.app("ana", listed["id"])
        versions = await cp.versions("ana", app["id"])
        version = await cp.version("ana", versions[0]["id"])
        pending = await cp.pending_approvals("ana")
        approval = await cp.approval("ana", pending.items[0]["id"])
        intent = await cp.intent("ana", approval["subject_id"])
    assert scope["path"] == "/scp_contoso/scp_engineering/scp_engineering_web/"
    assert (scope["level"], scope["name"]) == ("team", "web")
    assert (device["name"], device["id"]) == ("mac-00001", "dev_000001")
    assert device["scope_ids"]
    assert app == listed
    assert sorted(v["version"] for v in versions) == ["131.0.3", "132.0.0"]
    assert {v["application"] for v in versions} == {"firefox"}
    assert version["id"] == versions[0]["id"] and "supply_chain_gate" in version
    assert approval["decision"] == "pending" and approval["subject_type"] == "intent"
    assert intent["id"] == approval["subject_id"] and intent["target_scope_id"] == "scp_contoso"


async def test_unknown_ids_and_unseen_objects(shared_demo_cp: DemoControlPlane) -> None:
    async with ControlPlaneClient(shared_demo_cp.url, shared_demo_cp.gateway_token) as cp:
        calls: list[Any] = [
            cp.scope("ana", "scp_missing"),
            cp.device("ana", "dev_missing"),
            cp.app("ana", "app_missing"),
            cp.versions("ana", "app_missing"),
            cp.version("ana", "ver_missing"),
            cp.approval("ana", "apr_missing"),
            cp.intent("ana", "int_missing"),
            cp.decide_exception("sara", "exc_missing", "approve"),
        ]
        for call in calls:
            with pytest.raises(NotFoundError):
                await call
        # A scope above the principal's own subtree is refused, with the reason.
        with pytest.raises(NotAllowedError, match="outside the caller's subtree"):
            await cp.scope("sam", "scp_contoso")
        with pytest.raises(InvalidError):
            await cp.scope("ana", "../tenant")
