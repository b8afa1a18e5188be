"""Two gateway replicas on one PostgreSQL behind a load balancer: correct together.

Real processes on loopback: two ``goodbot serve`` on one schema (migrated once by ``goodbot
migrate``), the suite's round-robin balancer in front, a demo control plane behind. A retried
delivery landing on the other replica is processed once; a confirmation proposed on one and
clicked on the other, even six times at once on both, executes once; the message rate holds
across replicas; a SIGKILLed duty holder's duties move to the survivor.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import demo
from tests.demo import DemoControlPlane
from tests.e2e.cluster import Cluster, cluster, pg
from tests.e2e.test_cli_confirmations import cp_rollout

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def module_cp(
    demo_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoControlPlane]:
    """One demo control plane for this module's cluster (each test touches its own objects)."""
    path = tmp_path_factory.mktemp("replicas-cp") / "cp"
    shutil.copytree(demo_template, path)
    cp = demo.start(path, demo=False)
    try:
        yield cp
    finally:
        demo.stop(cp)


@pytest.fixture(scope="module")
def two(module_cp: DemoControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas and the balancer, shared by the module's tests (started once: seconds)."""
    root = tmp_path_factory.mktemp("replicas")
    with cluster(root, module_cp.url, module_cp.gateway_token, rates={"vera": 2}) as made:
        yield made


def turn(
    url: str, token: str, text: str, event_id: str | None = None, conversation: str = "replicas"
) -> tuple[int, dict[str, Any], str]:
    """One CLI turn: status, the ``done`` result (or the error) and the replica that ran it."""
    response = requests.post(
        f"{url}/cli/v1/turns",
        json={"text": text, "conversation": conversation, "event_id": event_id or uuid.uuid4().hex},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    upstream = response.headers.get("X-Upstream", url)
    if response.status_code != 200:
        return response.status_code, response.json()["error"], upstream
    events = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    (done,) = [e for e in events if e["type"] == "done"]
    return 200, dict(done["result"]), upstream


def decide(url: str, token: str, confirmation_id: str) -> tuple[int, dict[str, Any], str]:
    response = requests.post(
        f"{url}/cli/v1/confirmations/{confirmation_id}",
        json={"decision": "confirm"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    return response.status_code, response.json(), response.headers.get("X-Upstream", url)


def count(cluster_: Cluster, sql: str, *args: Any) -> int:
    """A count from the replicas' shared schema (``{s}`` is the schema)."""
    return int(pg(sql.format(s=cluster_.schema), *args))


def test_a_retried_delivery_on_the_other_replica_is_processed_once(two: Cluster) -> None:
    ana = two.tokens["ana"]
    event, conversation = "evt-" + uuid.uuid4().hex, uuid.uuid4().hex
    asked = "what is pending my approval?"
    status, first, where_first = turn(two.balancer_url, ana, asked, event, conversation)
    assert status == 200 and "zoom" in first["reply"]
    status, again, where_again = turn(two.balancer_url, ana, asked, event, conversation)
    assert status == 200
    assert where_first != where_again  # round robin: the retry reached the other replica
    assert again["reply"] == first["reply"]
    assert again["message_id"] == first["message_id"]
    scoped = f"ana:{event}"  # the CLI channel keys event ids by principal
    processed = "SELECT count(*) FROM {s}.processed_events WHERE event_id = $1"
    assert count(two, processed, scoped) == 1
    received = "SELECT count(*) FROM {s}.audit_records WHERE type = 'message.received'"
    assert count(two, received + " AND data->>'event_id' = $1", scoped) == 1
    replies = (
        "SELECT count(*) FROM {s}.messages WHERE direction = 'out' AND conversation_id ="
        " (SELECT conversation_id FROM {s}.messages WHERE id = $1)"
    )
    assert count(two, replies, first["message_id"]) == 1


def test_confirmations_execute_once_across_replicas(
    two: Cluster, module_cp: DemoControlPlane
) -> None:
    ana = two.tokens["ana"]
    first, second = two.replicas
    executing = (
        "SELECT count(*) FROM {s}.audit_records WHERE type = 'confirmation.executing'"
        " AND data->>'confirmation_id' = $1"
    )
    # Proposed on one replica, confirmed on the other.
    status, proposed, _ = turn(first.url, ana, "promote google-chrome to pilot")
    assert status == 200, proposed
    promote = proposed["confirmation"]
    assert promote["state"] == "pending" and promote["arguments"]["to_ring"] == 2
    status, body, _ = decide(second.url, ana, promote["id"])
    assert status == 200 and body["outcome"] == "confirmed", body
    status, body, _ = decide(first.url, ana, promote["id"])
    assert body["outcome"] == "already_decided"
    assert cp_rollout(module_cp, "google-chrome")["ring"] == 2
    assert count(two, executing, promote["id"]) == 1

    # Six clicks at once, alternating between the replicas through the balancer.
    status, proposed, _ = turn(second.url, ana, "pause google-chrome because users report crashes")
    assert status == 200, proposed
    pause = proposed["confirmation"]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: decide(two.balancer_url, ana, pause["id"]), range(6)))
    outcomes = sorted(body["outcome"] for _, body, _ in results)
    assert outcomes.count("confirmed") == 1 and outcomes.count("already_decided") == 5
    assert {where for _, _, where in results} == {r.url for r in two.replicas}
    assert cp_rollout(module_cp, "google-chrome")["status"] == "Paused"
    assert count(two, executing, pause["id"]) == 1


def test_the_message_rate_holds_across_replicas(two: Cluster) -> None:
    # Two messages a minute (one token every 30 s): per process, two replicas would let four
    # of these six through; shared, two.
    vera = two.tokens["vera"]
    results = [turn(two.balancer_url, vera, "/whoami") for _ in range(6)]
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == 2 and statuses.count(429) == 4
    assert {where for _, _, where in results} == {r.url for r in two.replicas}
    refused = [error for status, error, _ in results if status == 429]
    assert all(e["code"] == "rate_limited" for e in refused)


def test_a_killed_duty_holder_hands_its_duties_to_the_other_replica(two: Cluster) -> None:
    duties = ("confirmations.expiry", "notifications.poll", "recovery")
    for duty in duties:
        two.wait_for(lambda d=duty: len(two.holders(d)) == 1)  # type: ignore[misc]
    (holder,) = two.holders("confirmations.expiry")
    for duty in duties:  # exactly one replica each; never both
        assert len(two.holders(duty)) == 1
    survivor = 1 - holder
    two.kill(holder)
    two.wait_for(lambda: set(duties) <= set(two.replicas[survivor].duties()))
    ana = two.tokens["ana"]
    status, _, where = turn(two.balancer_url, ana, "/whoami")
    assert status == 200 and where == two.replicas[survivor].url  # the balancer skips the dead
    # Restarted, the old holder takes nothing back while the survivor lives.
    two.start(holder)
    assert two.replicas[holder].duties() == []
    assert two.holders("confirmations.expiry") == [survivor]
    status, _, _ = turn(two.replicas[holder].url, ana, "/whoami")
    assert status == 200
