"""Control plane demo, part II: releases in flight, told through the service's own API.

Every step goes through HTTP as the demo principal whose duty it is (packaging, CAB, security,
publishing), so the demo obeys the same gates and separation of duties as real use; the fleet
simulator is stepped in-process between steps. What it leaves behind:

- firefox 131.0.3: low risk, promoted lab → canary → pilot, healthy in pilot;
- firefox 132.0.0: started in canary, 90 % of installs succeed, its gate failed (Paused);
- google-chrome 131.0.6778: healthy in canary;
- zoom 6.2.5: risk above 50, waiting for CAB approval to enter pilot (ana and li see it);
- crowdstrike-falcon 7.18.0: privileged tooling, waiting for CAB approval to enter canary;
- terraform 1.10.3: a failed scan whose exception has expired, so it cannot be published;
- jetbrains-toolbox 2.5.1: just requested.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Final

import aiohttp
from sqlalchemy import update

from controlplane.connectors import TaskRunner
from controlplane.connectors.simulator import FleetSimulator
from controlplane.connectors.worker import tick
from controlplane.models import utcnow
from controlplane.models_release import RiskException
from controlplane.release import EVIDENCE_PARTS
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

ROOT: Final = "scp_contoso"
ENGINEERING: Final = "scp_engineering"
LOW_RISK: Final = {
    "privilege_impact": "user_context",
    "supply_chain_trust": "signed_known",
    "exploitability": "none",
    "data_access": "user_files",
    "sbom_vulnerability": "none",
    "blast_radius": {"ring": 4, "target_devices": 3000},
    "operational_complexity": "simple",
    "history": "clean",
}
HIGH_RISK: Final = {
    **LOW_RISK,
    "privilege_impact": "admin_required",
    "supply_chain_trust": "signed_unknown",
    "exploitability": "user_listener_or_scripting",
    "operational_complexity": "reboot_required",
    "history": "first_release",
    "justification": "Zoom's new installer runs as admin and opens a local listener.",
}


class DemoApi:
    """A thin client speaking as the demo principals."""

    def __init__(self, http: aiohttp.ClientSession, url: str, tokens: dict[str, Any]) -> None:
        self.http, self.url, self.tokens = http, url, tokens

    async def call(
        self, who: str, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]['token']}"}
        async with self.http.request(
            method, f"{self.url}/api/v1{path}", json=body, headers=headers
        ) as resp:
            data = await resp.json()
            if resp.status not in ok:
                raise RuntimeError(f"demo step {method} {path} as {who}: {resp.status} {data}")
            return data


async def seed_release(state: ServiceState, url: str, tokens: dict[str, Any]) -> bool:
    """Tell the release story once; False when the catalog already has applications."""
    async with aiohttp.ClientSession() as http:
        api = DemoApi(http, url, tokens)
        if (await api.call("omar", "GET", "/apps"))["items"]:
            return False
        simulator = FleetSimulator(state)
        runner = TaskRunner(state, simulator)
        hours = 0

        async def step_fleet() -> None:
            # Two ticks an hour apart in simulated time: publish, then resolve every install.
            nonlocal hours
            for _ in range(2):
                hours += 1
                await tick(state, simulator, runner, now=utcnow() + timedelta(hours=hours))

        ff131 = await release(
            api,
            "firefox",
            "131.0.3",
            risk=LOW_RISK,
            category="browser",
            description="Mozilla Firefox, the standard browser.",
        )
        ff132 = await release(api, "firefox", "132.0.0", risk=LOW_RISK, new_app=False)
        chrome = await release(
            api,
            "google-chrome",
            "131.0.6778",
            risk=LOW_RISK,
            category="browser",
            description="Google Chrome for the web team.",
        )
        zoom = await release(
            api,
            "zoom",
            "6.2.5",
            risk=HIGH_RISK,
            category="collaboration",
            description="Zoom Workplace client.",
        )
        falcon = await release(
            api,
            "crowdstrike-falcon",
            "7.18.0",
            risk=LOW_RISK,
            category="security",
            privileged=True,
            description="CrowdStrike Falcon sensor (system extension).",
        )
        await expired_exception(api, state)
        await just_requested(api)

        a = await intent(api, ff131, "demo-firefox-131", 0)
        g = await intent(api, chrome, "demo-chrome-131", 0)
        z = await intent(api, zoom, "demo-zoom-625", 0)
        f = await intent(api, falcon, "demo-falcon-718", 0)
        await step_fleet()
        for rollout in (a, g, z):
            await api.call("omar", "POST", f"/rollouts/{rollout}/promote")
        await api.call("omar", "POST", f"/rollouts/{f}/promote", ok=(409,))  # CAB: privileged
        await step_fleet()
        await api.call("omar", "POST", f"/rollouts/{z}/promote", ok=(409,))  # CAB: risk > 50
        await api.call("omar", "POST", f"/rollouts/{g}/evaluate")
        await api.call("omar", "POST", f"/rollouts/{a}/promote")  # into pilot, canary is free
        # One change per application and ring: firefox 132 enters canary once 131 left it.
        b = await intent(
            api,
            ff132,
            "demo-firefox-132",
            1,
            success=0.9,
            notes="Canary of the 132 build; watch the crash reports.",
        )
        await step_fleet()
        await api.call("omar", "POST", f"/rollouts/{b}/evaluate")  # the failed gate pauses it
        return True


async def release(
    api: DemoApi,
    app: str,
    version: str,
    *,
    risk: dict[str, Any],
    category: str = "",
    description: str = "",
    privileged: bool = False,
    new_app: bool = True,
) -> str:
    """Catalog → artifact → evidence → risk → approved (CAB) → published; the version id."""
    if new_app:
        await api.call(
            "omar",
            "POST",
            "/apps",
            {
                "name": app,
                "owner": "omar",
                "category": category,
                "support_tier": "tier1",
                "allowed_scope_ids": [ROOT],
                "privileged": privileged,
                "description": description,
            },
        )
    app_id = next(
        a["id"] for a in (await api.call("omar", "GET", "/apps"))["items"] if a["name"] == app
    )
    vid = (
        await api.call(
            "omar",
            "POST",
            f"/apps/{app_id}/versions",
            {"version": version, "supported_os": ["macos"], "release_notes": f"{app} {version}"},
        )
    )["id"]
    await api.call("omar", "POST", f"/versions/{vid}/artifacts", artifact(app, version, "pass"))
    await api.call("omar", "POST", f"/versions/{vid}/evidence", {"parts": evidence(app, version)})
    await api.call("omar", "POST", f"/versions/{vid}/risk", risk)
    for to, who in (
        ("packaged", "omar"),
        ("staged", "omar"),
        ("approved", "ana"),
        ("published", "omar"),
    ):
        await api.call(who, "POST", f"/versions/{vid}/transition", {"to": to})
    return str(vid)


def artifact(app: str, version: str, scan: str, **findings: int) -> dict[str, Any]:
    seed = f"{app}-{version}".encode().hex()
    return {
        "platform": "macos",
        "sha256": (seed * 8)[:64].ljust(64, "0"),
        "signing": {"signer": f"Developer ID Application: {app}", "valid": True, "notarized": True},
        "sbom_ref": f"s3://sbom/{app}-{version}.cdx.json",
        "scan_result": scan,
        "findings": findings,
    }


def evidence(app: str, version: str, **extra: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {
        part: {"ref": f"s3://evidence/{app}/{version}/{part}"} for part in EVIDENCE_PARTS
    }
    parts.update(extra)
    return parts


async def intent(
    api: DemoApi, version_id: str, key: str, ring: int, *, success: float = 1.0, notes: str = ""
) -> str:
    """A deployment intent to the whole organization, at most 60 devices a ring; its rollout."""
    created = await api.call(
        "omar",
        "POST",
        "/intents",
        {
            "client_key": key,
            "version_id": version_id,
            "target_scope_id": ROOT,
            "ring": ring,
            "constraints": {"max_devices": 60, "simulate_success_rate": success},
            "notes": notes,
        },
    )
    return str(created["rollout_id"])


async def expired_exception(api: DemoApi, state: ServiceState) -> None:
    """terraform 1.10.3: scan failed; its approved exception ran out yesterday."""
    await api.call(
        "omar",
        "POST",
        "/apps",
        {
            "name": "terraform",
            "owner": "priya",
            "category": "devtools",
            "support_tier": "tier2",
            "allowed_scope_ids": [ENGINEERING],
            "description": "HashiCorp Terraform CLI.",
        },
    )
    app_id = next(
        a["id"]
        for a in (await api.call("omar", "GET", "/apps"))["items"]
        if a["name"] == "terraform"
    )
    vid = (
        await api.call(
            "omar",
            "POST",
            f"/apps/{app_id}/versions",
            {"version": "1.10.3", "supported_os": ["macos"]},
        )
    )["id"]
    await api.call(
        "omar",
        "POST",
        f"/versions/{vid}/artifacts",
        artifact("terraform", "1.10.3", "fail", high=2),
    )
    exception = await api.call(
        "omar",
        "POST",
        f"/versions/{vid}/exceptions",
        {
            "kind": "vulnerability",
            "reason": "CVE in the bundled go-getter; fix due upstream.",
            "compensating_controls": ["platform team only", "egress proxy blocks the exploit"],
            "owner": "priya",
            "expires_at": (utcnow() + timedelta(days=1)).isoformat(),
        },
    )
    await api.call(
        "sara",
        "POST",
        f"/exceptions/{exception['id']}/decision",
        {"decision": "approve", "comment": "compensating controls reviewed"},
    )
    await api.call(
        "omar",
        "POST",
        f"/versions/{vid}/evidence",
        {"parts": evidence("terraform", "1.10.3", exceptions={"ids": [exception["id"]]})},
    )
    async with state.writing() as session:
        # The API only accepts future expiry dates; the demo needs one that has passed.
        await session.execute(
            update(RiskException)
            .where(RiskException.id == exception["id"])
            .values(expires_at=utcnow() - timedelta(days=1))
        )
    for to, who in (("packaged", "omar"), ("staged", "omar"), ("approved", "li")):
        await api.call(who, "POST", f"/versions/{vid}/transition", {"to": to})
    await api.call("omar", "POST", f"/versions/{vid}/transition", {"to": "published"}, ok=(409,))


async def just_requested(api: DemoApi) -> None:
    await api.call(
        "omar",
        "POST",
        "/apps",
        {
            "name": "jetbrains-toolbox",
            "owner": "sam",
            "category": "devtools",
            "support_tier": "tier3",
            "allowed_scope_ids": [ENGINEERING],
            "description": "JetBrains Toolbox App.",
        },
    )
    app_id = next(
        a["id"]
        for a in (await api.call("omar", "GET", "/apps"))["items"]
        if a["name"] == "jetbrains-toolbox"
    )
    await api.call(
        "omar",
        "POST",
        f"/apps/{app_id}/versions",
        {"version": "2.5.1", "supported_os": ["macos", "windows"]},
    )
