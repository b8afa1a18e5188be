"""Release sweeps: an approved exception close to expiry is announced once."""

from __future__ import annotations

from datetime import timedelta

from controlplane.models import utcnow
from controlplane.sweeps import sweep_once
from tests.controlplane.client import ControlPlane
from tests.controlplane.test_catalog import (
    artifact,
    decide,
    events,
    new_app,
    new_version,
    request_exception,
)


async def test_expiring_exception_is_announced_once(cp: ControlPlane) -> None:
    t = await cp.tenant()
    packager = await t.principal("pat", ["packaging_engineer"])
    reviewer = await t.principal("sam", ["security_reviewer"])
    app = await new_app(packager, [t.root])
    vid = (await new_version(packager, app["id"]))["id"]
    (await packager.post(f"/api/v1/versions/{vid}/artifacts", artifact("fail", high=1))).ok(201)
    soon = await request_exception(packager, vid, days=3)
    later = await request_exception(packager, vid, days=60)
    await decide(reviewer, soon, "approve")
    await decide(reviewer, later, "approve")
    # Sweeps cover every tenant (other tests' too, on a shared PostgreSQL schema), so the
    # checks read this tenant's events rather than the sweep's total.
    await sweep_once(cp.state)
    await sweep_once(cp.state)  # a second pass announces nothing again

    async def announced() -> list[str]:
        found = await events(t.owner, "exception_expiring")
        return [e["data"].get("exception_id", e["data"].get("id")) for e in found]

    assert await announced() == [soon]
    # Two months on, the later one is due (and the first is not announced again).
    assert await sweep_once(cp.state, utcnow() + timedelta(days=55)) >= 1
    assert await announced() == [soon, later]
