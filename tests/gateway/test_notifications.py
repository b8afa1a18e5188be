"""Notifications: control-plane events reach the people concerned, once, on the channels they use.

Against the demo control plane as a process: zoom and crowdstrike-falcon wait for CAB
approval (ana and li may decide, omar requested them), firefox 132.0.0 was paused in canary by
its failed install gate (omar requested it and owns firefox), and the terraform exception
(owned by priya) has expired.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.metrics import Metrics
from gateway.notifications import Notifications, gate_text, percent, plain
from policy.loader import PolicySource
from sessions.store import SessionStore
from tests.demo import DemoControlPlane, start, stop
from tools.controlplane import ControlPlaneClient
from tools.errors import ConflictError

APPROVAL = re.compile(
    r"^CAB approval (apr_\w+) is waiting for you: publish (zoom 6\.2\.5 into ring 2 \(pilot\)"
    r"|crowdstrike-falcon 7\.18\.0 into ring 1 \(canary\)) of scope contoso\. "
    r"Approve with: /approve \1$"
)
FIREFOX_PAUSED = re.compile(
    r"^Rollout of firefox 132\.0\.0 paused in canary: install_success_rate \d+(\.\d+)?% "
    r"\(needs 98%\)\. Details: /rollout firefox 132\.0\.0 \(ro_\w+\)$"
)
TERRAFORM_EXPIRED = re.compile(
    r"^Risk exception exc_\w+ for terraform 1\.10\.3 expired on \d{4}-\d\d-\d\d; "
    r"the supply-chain gate no longer counts it\.$"
)


def identity(name: str) -> str:
    return "sha256:" + hashlib.sha256(f"token-of-{name}".encode()).hexdigest()


def policy_file(path: Path, principals: list[str], *, teams_for: tuple[str, ...] = ()) -> Path:
    """A policy file: the CLI enabled, Teams not; each principal with a CLI identity."""
    lines = [
        "version: 1",
        "channels:",
        "  cli: {}",
        "  teams: {enabled: false}",
        "roles:",
        "  cab: {grants: [approval.read, approval.decide]}",
        "  release: {grants: [approval.read, ring.pause, ring.resume]}",
        "principals:",
    ]
    for name in principals:
        role = "cab" if name in ("ana", "li") else "release"
        lines.append(f"  {name}:")
        lines.append(f"    roles: [{role}]")
        lines.append("    identities:")
        lines.append(f"      - {{channel: cli, id: '{identity(name)}'}}")
        if name in teams_for:
            lines.append(f"      - {{channel: teams, id: 'tenant-1:{name}'}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Setup:
    """A notifier over a real store, policy file and client on a demo control plane."""

    notifications: Notifications
    store: SessionStore
    cp: ControlPlaneClient
    metrics: Metrics
    demo: DemoControlPlane

    async def take(self, principal: str, channel: str = "cli") -> list[str]:
        return [n["text"] for n in await self.notifications.take(principal, channel)]

    def counted(self, outcome: str, channel: str = "cli") -> float:
        labels = {"channel": channel, "outcome": outcome}
        return self.metrics.registry.get_sample_value("goodbot_notifications_total", labels) or 0


@pytest.fixture
async def setup(demo_cp: DemoControlPlane, tmp_path: Path) -> AsyncIterator[Setup]:
    path = policy_file(
        tmp_path / "policy.yaml", ["ana", "li", "omar", "priya"], teams_for=("ana", "omar")
    )
    store = await SessionStore.open(f"sqlite+aiosqlite:///{tmp_path}/g.db")
    async with ControlPlaneClient(demo_cp.url, demo_cp.gateway_token, timeout=30) as cp:
        metrics = Metrics()
        notifications = Notifications(store, cp, PolicySource.load(path), metrics)
        await terraform_expiry_announced(cp)
        yield Setup(notifications, store, cp, metrics, demo_cp)
    await store.close()


async def terraform_expiry_announced(cp: ControlPlaneClient) -> None:
    """Wait for the control plane's first sweep, which announces the expired exception."""
    for _ in range(100):
        if await cp.events("aud", type="exception_expiring"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the control plane never announced the expired exception")


async def call(demo: DemoControlPlane, who: str, method: str, path: str, body: Any = None) -> Any:
    """A request as a demo principal with its own token (not through the gateway)."""
    headers = {"Authorization": f"Bearer {demo.tokens[who]}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{demo.url}/api/v1{path}", json=body, headers=headers) as resp,
    ):
        data = await resp.json()
        assert resp.status < 400, data
        return data


async def test_the_first_poll_tells_deciders_owners_and_nobody_twice(setup: Setup) -> None:
    # A round that meets a slow or failing control plane ends early and the next one goes on
    # (seen once in a long suite run): count rounds until one finds nothing new. An event
    # passed over for good, or told twice, still shows as a total other than 6.
    total = 0
    for _ in range(3):
        found = await setup.notifications.poll()
        if found == 0:
            break
        total += found
    assert total == 6
    assert await setup.notifications.poll() == 0

    pending = {item["id"] for item in (await setup.cp.pending_approvals("ana")).items}
    for decider in ("ana", "li"):
        texts = await setup.take(decider)
        assert len(texts) == 2
        matches = [APPROVAL.match(text) for text in texts]
        assert all(matches), texts
        assert {m.group(1) for m in matches if m} == pending
    # omar requested both approvals, so neither waits for him; his firefox rollout paused.
    [paused] = await setup.take("omar")
    assert FIREFOX_PAUSED.match(paused), paused
    [expired] = await setup.take("priya")
    assert TERRAFORM_EXPIRED.match(expired), expired

    # Taken once; Teams is disabled in the policy file, so nothing waits there.
    for principal in ("ana", "li", "omar", "priya"):
        assert await setup.take(principal) == []
        assert await setup.take(principal, "teams") == []
    assert setup.counted("enqueued") == setup.counted("delivered") == 6
    assert setup.counted("enqueued", "teams") == 0


async def test_take_returns_the_shape_channels_show(setup: Setup) -> None:
    await setup.notifications.poll()
    [item] = await setup.notifications.take("omar", "cli")
    assert set(item) == {"id", "text", "created_at", "topic"}
    assert item["id"].startswith("ntf_")
    assert item["topic"] == "rollout.paused"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", item["created_at"])


async def test_concurrent_takes_hand_each_notification_over_once(setup: Setup) -> None:
    await setup.notifications.poll()
    batches = await asyncio.gather(*(setup.notifications.take("ana", "cli") for _ in range(4)))
    assert sorted(len(batch) for batch in batches) == [0, 0, 0, 2]


async def test_later_events_reach_the_people_concerned(setup: Setup) -> None:
    cp, demo = setup.cp, setup.demo
    await setup.notifications.poll()
    for principal in ("ana", "li", "omar", "priya"):
        await setup.take(principal)
    # li wants to hear about every pause she may see, on the CLI.
    await setup.store.directory.subscribe("li", "cli", "rollout.paused")

    # ana denies the zoom request; omar asks again by promoting: a new CAB request.
    zoom = next(
        item
        for item in (await cp.pending_approvals("ana")).items
        if item["summary"].startswith("CAB approval to publish zoom")
    )
    await cp.decide_approval("ana", zoom["id"], "deny", "not before the all-hands")
    zoom_rollout = (await cp.intent("omar", zoom["subject_id"]))["rollout_id"]
    with pytest.raises(ConflictError) as refused:
        await cp.promote("omar", zoom_rollout, 1)
    new_approval = refused.value.details["approval_id"]
    assert new_approval != zoom["id"]

    # firefox 132 resumed and evaluated again: its gate still fails and pauses it.
    [firefox] = await cp.rollouts("omar", status="Paused")
    await cp.resume("omar", firefox["id"], "let us see")
    await call(demo, "omar", "POST", f"/rollouts/{firefox['id']}/evaluate")

    # The new request for ana and li; the pause for omar and for li, who subscribed.
    assert await setup.notifications.poll() == 4
    request = (
        f"CAB approval {new_approval} is waiting for you: publish zoom 6.2.5 into ring 2 "
        f"(pilot) of scope contoso. Approve with: /approve {new_approval}"
    )
    assert await setup.take("ana") == [request]
    [li_request, li_paused] = await setup.take("li")
    assert li_request == request
    assert FIREFOX_PAUSED.match(li_paused), li_paused
    [omar_paused] = await setup.take("omar")
    assert omar_paused == li_paused
    assert await setup.take("priya") == []
    assert await setup.notifications.poll() == 0


async def test_a_subscriber_sees_pauses_as_plain_text(setup: Setup) -> None:
    cp = setup.cp
    await setup.notifications.poll()
    await setup.take("li")
    await setup.take("omar")
    await setup.store.directory.subscribe("li", "cli", "rollout.paused")
    await setup.store.directory.subscribe("li", "teams", "rollout.paused")
    [chrome_app] = await cp.apps("omar", "google-chrome")
    [chrome] = await cp.rollouts("omar", app_id=chrome_app["id"])
    reason = "crash reports\n\n**from** [canary](https://evil.example) <b>`now`</b> | x"
    await cp.pause("omar", chrome["id"], reason)

    assert await setup.notifications.poll() == 1
    assert await setup.take("omar") == []
    assert await setup.take("li") == [
        "Rollout of google-chrome 131.0.6778 paused in canary by omar: crash reports from "
        "(canary)(https://evil.example) (b)'now'(/b) / x. "
        f"Details: /rollout google-chrome 131.0.6778 ({chrome['id']})"
    ]
    assert await setup.take("li", "teams") == []  # subscribed, but the channel is disabled


async def test_a_stopped_control_plane_loses_nothing(setup: Setup, tmp_path: Path) -> None:
    stop(setup.demo)
    assert await setup.notifications.poll() == 0
    for source in ("approval_requested", "rollout_paused"):
        assert await setup.store.notifications.cursor(f"controlplane:{source}") is None

    restarted = start(setup.demo.data_dir, demo=False)
    try:
        async with ControlPlaneClient(restarted.url, restarted.gateway_token, timeout=30) as cp:
            policy = PolicySource.load(tmp_path / "policy.yaml")
            again = Notifications(setup.store, cp, policy, setup.metrics)
            assert await again.poll() == 6
            assert await again.poll() == 0
    finally:
        stop(restarted)
    assert len(await setup.take("ana")) == 2


async def test_the_reader_is_the_first_principal_that_may_read_events(
    setup: Setup, tmp_path: Path
) -> None:
    cp, metrics = setup.cp, setup.metrics
    # omar (a publisher) may not read the audit trail; li (an auditor) may.
    path = policy_file(tmp_path / "omar-li.yaml", ["omar", "li"])
    store = await SessionStore.open(f"sqlite+aiosqlite:///{tmp_path}/other.db")
    try:
        assert await Notifications(store, cp, PolicySource.load(path), metrics).poll() == 3
        # Nobody in this file may read events: nothing happens, nothing is raised.
        alone = policy_file(tmp_path / "omar.yaml", ["omar"])
        fresh = await SessionStore.open(f"sqlite+aiosqlite:///{tmp_path}/alone.db")
        try:
            assert await Notifications(fresh, cp, PolicySource.load(alone), metrics).poll() == 0
            # Unless told whom to read as.
            told = Notifications(fresh, cp, PolicySource.load(alone), metrics, reader="aud")
            assert await told.poll() == 1
        finally:
            await fresh.close()
    finally:
        await store.close()


def test_free_text_becomes_one_plain_capped_line() -> None:
    assert (
        plain("a\n\n*b*  [c](http://x)\t<i>|`d`\\ ~e~\u202e\x00")
        == "a b (c)(http://x) (i)/'d'/ -e-"
    )
    assert plain("x" * 300) == "x" * 199 + "…"
    assert plain(None) == ""
    assert percent(0.8833333) == "88.33%"
    assert percent(0.98) == "98%"
    assert percent(1.0) == "100%"
    rate = {"name": "install_success_rate", "measured": 0.9, "threshold": 0.98}
    assert gate_text(rate) == "install_success_rate 90% (needs 98%)"
    incidents = {"name": "no_open_incident", "measured": 2, "threshold": 0}
    assert gate_text(incidents) == "no_open_incident 2 (needs 0)"
