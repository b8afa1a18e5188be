"""Gateway notification delivery: the outbox → push channels (Slack, Teams), at least once.

The notification poller (``gateway.notifications``) stores one outbox row per person and
channel. Pull channels (the CLI, and every channel before a turn) take them when the person
shows up. A push channel implements ``Deliverer`` and the composition root registers it
here; ``Delivery.run`` (a background duty) then:

1. claims the oldest free rows of each push channel for a lease (``NotificationOutbox.claim``:
   one conditional UPDATE, so two replicas never hold the same row at once);
2. groups them per person, looks up the person's identities on that channel in the policy
   file, and calls ``deliver`` once per person;
3. marks the rows delivered when ``deliver`` returns, or holds them back with an exponential
   backoff when it raises or times out. A process that dies while sending leaves the lease to
   run out and the rows are claimed again, so delivery is at least once; after
   ``PUSH_ATTEMPTS`` claims a row waits for the person's next message instead.

A person with no identity on the channel any more (the policy file changed) cannot be
reached there: the rows are marked delivered and counted as ``undeliverable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from gateway.metrics import Metrics
from policy.loader import PolicySource
from sessions.notifications import Notification
from sessions.store import SessionStore

log = logging.getLogger(__name__)

LEASE: Final = timedelta(seconds=60)
"""How long a claim holds its rows; longer than ``SEND_TIMEOUT``, so a live sender finishes."""
SEND_TIMEOUT: Final = 30.0
"""Seconds one ``deliver`` call may take before it counts as failed."""
BACKOFF: Final = timedelta(seconds=5)
"""Wait after the first failed send; doubled per further attempt."""
BACKOFF_CAP: Final = timedelta(minutes=15)
"""Longest wait between attempts."""


class Deliverer(Protocol):
    """A channel that can send notifications without being asked (a push channel)."""

    @property
    def channel(self) -> str:
        """The channel name the outbox rows carry, such as ``slack``."""
        ...

    async def deliver(
        self, principal: str, identities: Sequence[str], items: Sequence[Mapping[str, Any]]
    ) -> None:
        """Send one person's notifications, oldest first; raise if they were not sent.

        Args:
            principal: The gateway principal (policy file key) they are for.
            identities: The principal's identities on this channel (never empty).
            items: ``{"id", "text", "topic", "created_at", "data"}`` per notification (see
                ``item``); ``data`` holds structured facts a channel may render as a card.
        """
        ...


def item(notification: Notification) -> dict[str, Any]:
    """The form channels receive a notification in (``Deliverer.deliver``, ``take``)."""
    return {
        "id": f"ntf_{notification.id}",
        "text": notification.text,
        "created_at": notification.created_at.isoformat(timespec="seconds"),
        "topic": notification.topic,
        "data": dict(notification.data),
    }


def backoff(attempts: int) -> timedelta:
    """The wait after a failed send that was the ``attempts``-th claim."""
    wait: timedelta = BACKOFF * 2 ** min(max(attempts - 1, 0), 16)
    return min(wait, BACKOFF_CAP)


class Delivery:
    """Sends the outbox's rows for every registered push channel (``Gateway.delivery``)."""

    def __init__(
        self,
        store: SessionStore,
        policy: PolicySource,
        metrics: Metrics,
        deliverers: Sequence[Deliverer] = (),
        *,
        lease: timedelta = LEASE,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        """Wire the collaborators; nothing is sent until ``run``.

        Args:
            store: The session store whose outbox is read.
            policy: The policy file, for each person's identities on a channel.
            metrics: ``notifications`` counts ``delivered``, ``retried`` and
                ``undeliverable`` per channel.
            deliverers: The push channels, at most one per channel name.
            lease: How long a claim holds its rows.
            send_timeout: Seconds one ``deliver`` call may take.
        """
        self._store = store
        self._policy = policy
        self._metrics = metrics
        self._deliverers: dict[str, Deliverer] = {}
        self._lease = lease
        self._send_timeout = send_timeout
        for deliverer in deliverers:
            self.register(deliverer)

    def register(self, deliverer: Deliverer) -> None:
        """Add a push channel.

        Raises:
            ValueError: A deliverer for that channel is already registered.
        """
        if deliverer.channel in self._deliverers:
            raise ValueError(f"a deliverer for {deliverer.channel} is already registered")
        self._deliverers[deliverer.channel] = deliverer

    @property
    def channels(self) -> list[str]:
        """The registered push channels."""
        return sorted(self._deliverers)

    async def run(self, *, now: datetime | None = None) -> int:
        """One round over every push channel; how many notifications were sent."""
        sent = 0
        for channel, deliverer in sorted(self._deliverers.items()):
            sent += await self._channel(channel, deliverer, now or datetime.now(UTC))
        return sent

    async def _channel(self, channel: str, deliverer: Deliverer, now: datetime) -> int:
        outbox = self._store.notifications
        claimed = await outbox.claim(channel, lease=self._lease, now=now)
        people: dict[str, list[Notification]] = {}
        for notification in claimed:
            people.setdefault(notification.principal_id, []).append(notification)
        sent = 0
        principals = self._policy.current.source.principals
        for principal, rows in people.items():
            ids = [n.id for n in rows]
            known = principals.get(principal)
            identities = [i.id for i in known.identities if i.channel == channel] if known else []
            if not identities:
                await outbox.sent(ids)
                self._metrics.notifications.labels(channel, "undeliverable").inc(len(ids))
                log.warning(
                    "notifications undeliverable: no identity on the channel",
                    extra={"channel": channel, "principal": principal, "count": len(ids)},
                )
                continue
            try:
                async with asyncio.timeout(self._send_timeout):
                    await deliverer.deliver(principal, identities, [item(n) for n in rows])
            except Exception as exc:
                # A channel's failure (its API down, throttled, a bug) must not stop the
                # others: hold the rows back and try again later.
                attempts = max(n.attempts for n in rows)
                await outbox.retry(ids, datetime.now(UTC) + backoff(attempts))
                self._metrics.notifications.labels(channel, "retried").inc(len(ids))
                log.warning(
                    "notification delivery failed; will retry",
                    extra={
                        "channel": channel,
                        "principal": principal,
                        "attempts": attempts,
                        "error": type(exc).__name__,
                    },
                )
                continue
            await outbox.sent(ids)
            self._metrics.notifications.labels(channel, "delivered").inc(len(ids))
            sent += len(ids)
        return sent
