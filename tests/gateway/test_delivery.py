"""Notification delivery: the outbox reaches push channels at least once, failures retried."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery import BACKOFF, BACKOFF_CAP, Delivery, backoff
from gateway.metrics import Metrics
from policy.loader import PolicySource
from sessions.notifications import NewNotification
from sessions.store import SessionStore
from tests.sessions.conftest import Target

POLICY = """\
version: 1
channels:
  cli: {}
  slack: {}
roles:
  cab: {grants: [approval.read, approval.decide]}
principals:
  ana:
    roles: [cab]
    identities:
      - {channel: slack, id: 'T1:UANA'}
      - {channel: slack, id: 'T2:UANA2'}
  li:
    roles: [cab]
    identities:
      - {channel: slack, id: 'T1:ULI'}
  omar:
    roles: [cab]
"""


@dataclass
class Recorder:
    """A push channel that records what it was given; ``fail`` makes the next sends raise."""

    channel: str = "slack"
    sent: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    fail: int = 0
    hang: bool = False

    async def deliver(
        self, principal: str, identities: Sequence[str], items: Sequence[Mapping[str, Any]]
    ) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the channel's API is down")
        self.sent.append((principal, list(identities), [str(i["text"]) for i in items]))


def note(principal: str, key: str, channel: str = "slack") -> NewNotification:
    return NewNotification(principal, channel, "approval.requested", f"{key} waits", key)


@pytest.fixture
def policy(tmp_path: Path) -> PolicySource:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return PolicySource.load(path)


def count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "goodbot_notifications_total", {"channel": "slack", "outcome": outcome}
    )
    return value or 0.0


async def test_each_person_gets_their_notifications_once_on_every_identity(
    store: SessionStore, policy: PolicySource
) -> None:
    await store.notifications.enqueue(
        [note("ana", "apr_1"), note("li", "apr_1"), note("ana", "apr_2"), note("ana", "x", "cli")]
    )
    recorder, metrics = Recorder(), Metrics()
    delivery = Delivery(store, policy, metrics, [recorder])
    assert delivery.channels == ["slack"]
    assert await delivery.run() == 3
    assert sorted(recorder.sent) == [
        ("ana", ["T1:UANA", "T2:UANA2"], ["apr_1 waits", "apr_2 waits"]),
        ("li", ["T1:ULI"], ["apr_1 waits"]),
    ]
    assert await delivery.run() == 0
    assert len(recorder.sent) == 2
    assert count(metrics, "delivered") == 3
    # The CLI's row is left for the person's next CLI turn.
    assert [n.dedupe_key for n in await store.notifications.waiting("ana", "cli")] == ["x"]


async def test_a_failed_send_is_retried_after_its_backoff(
    store: SessionStore, policy: PolicySource
) -> None:
    await store.notifications.enqueue([note("li", "apr_1")])
    recorder, metrics = Recorder(fail=1), Metrics()
    delivery = Delivery(store, policy, metrics, [recorder])
    assert await delivery.run() == 0
    assert count(metrics, "retried") == 1
    assert await delivery.run() == 0  # still backing off
    assert recorder.sent == []
    later = datetime.now(UTC) + BACKOFF + timedelta(seconds=1)
    assert await delivery.run(now=later) == 1
    assert recorder.sent == [("li", ["T1:ULI"], ["apr_1 waits"])]


async def test_a_hung_send_times_out_and_is_retried(
    store: SessionStore, policy: PolicySource
) -> None:
    await store.notifications.enqueue([note("li", "apr_1")])
    recorder = Recorder(hang=True)
    delivery = Delivery(store, policy, Metrics(), [recorder], send_timeout=0.2)
    assert await delivery.run() == 0
    recorder.hang = False
    assert await delivery.run(now=datetime.now(UTC) + BACKOFF_CAP) == 1


async def test_a_person_without_an_identity_there_is_counted_undeliverable(
    store: SessionStore, policy: PolicySource
) -> None:
    await store.notifications.enqueue([note("omar", "apr_1"), note("nobody", "apr_2")])
    recorder, metrics = Recorder(), Metrics()
    assert await Delivery(store, policy, metrics, [recorder]).run() == 0
    assert recorder.sent == []
    assert count(metrics, "undeliverable") == 2
    assert await store.notifications.waiting("omar", "slack") == []


async def test_two_replicas_deliver_each_notification_once(
    store: SessionStore, target: Target, policy: PolicySource
) -> None:
    await store.notifications.enqueue(
        [note(p, f"apr_{n}") for n in range(30) for p in ("ana", "li")]
    )
    other = await target.open()
    try:
        first, second = Recorder(), Recorder()
        a = Delivery(store, policy, Metrics(), [first])
        b = Delivery(other, policy, Metrics(), [second])
        totals = await asyncio.gather(a.run(), b.run(), a.run(), b.run())
    finally:
        await other.close()
    assert sum(totals) == 60
    texts = [(p, t) for r in (first, second) for p, _, items in r.sent for t in items]
    assert len(texts) == len(set(texts)) == 60


def test_backoff_doubles_up_to_its_cap() -> None:
    assert backoff(1) == BACKOFF
    assert backoff(2) == 2 * BACKOFF
    assert backoff(40) == BACKOFF_CAP


def test_one_deliverer_per_channel(store: SessionStore, policy: PolicySource) -> None:
    delivery = Delivery(store, policy, Metrics(), [Recorder()])
    with pytest.raises(ValueError, match="already registered"):
        delivery.register(Recorder())
