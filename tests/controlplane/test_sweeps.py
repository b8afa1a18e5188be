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
    assert await sweep_once(cp.state) == 1
    assert await sweep_once(cp.state) == 0  # announced once
    announced = await events(t.owner, "exception_expiring")
    assert [e["data"].get("exception_id", e["data"].get("id")) for e in announced] == [soon]
    # Two months on, the later one is due (and the first is not announced again).
    assert await sweep_once(cp.state, utcnow() + timedelta(days=55)) == 1
