"""Control plane webhooks: the sender that posts queued event deliveries to subscribers.

Sits behind the event chain: ``events.append_events`` queues one ``WebhookDelivery`` row per
matching subscription in the event's own transaction, so a delivery exists exactly when its
event does. The sender here claims due rows, posts each event and records the outcome; a
failed attempt is retried with exponential backoff until ``webhook_max_attempts``.

What a receiver gets, and checks::

    POST <url>                     body: the event as canonical JSON (``events.event_document``)
    X-Goodbot-Event-Id: <tenant_id>:<seq>          the same on every retry; dedupe on it
    X-Goodbot-Timestamp: <unix seconds>            reject requests that are minutes old
    X-Goodbot-Signature: v1=<hex hmac_sha256(secret, f"{timestamp}.{body}")>

Delivery is at least once: a sender that dies between posting and recording posts again once
its claim lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import aiohttp
from sqlalchemy import select, update
from yarl import URL

from controlplane.egress import connector_kwargs, literal_refusal
from controlplane.events import event_document, on_deliveries_committed
from controlplane.models import Event, WebhookDelivery, WebhookSubscription, utcnow
from controlplane.signing import canonical
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

SIGNATURE_VERSION: Final = "v1"
MAX_BACKOFF_SECONDS: Final = 3600.0
"""Retry delays double from ``webhook_backoff_base_seconds`` up to this cap."""
SEND_TIMEOUT_SECONDS: Final = 10.0
"""Longest a receiver may take to answer one delivery."""
CLAIM: Final = timedelta(seconds=3 * SEND_TIMEOUT_SECONDS)
"""How long a claimed delivery is hidden from other senders; outlasts any send attempt."""
BATCH: Final = 50
"""Deliveries claimed and sent concurrently per pass."""
USER_AGENT: Final = "goodbot-controlplane-webhooks/1"


def new_secret() -> str:
    """A fresh HMAC key for a subscription (256 bits, with a prefix secret scanners know)."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Goodbot-Signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def backoff(attempts: int, base_seconds: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: doubling from base, up to 1 h."""
    return min(base_seconds * 2.0 ** min(attempts - 1, 32), MAX_BACKOFF_SECONDS)


@dataclass(frozen=True, slots=True)
class _Send:
    """One claimed delivery, with what sending it needs."""

    delivery_id: int
    subscription_id: str
    attempts: int
    url: str
    secret: str
    active: bool
    event_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class _Result:
    send: _Send
    error: str | None
    """None when the receiver answered 2xx."""


async def deliver_due(state: ServiceState, http: aiohttp.ClientSession) -> float:
    """Claim due deliveries, post them and record the outcomes: one pass of the sender.

    Args:
        state: The service state (settings, sessions).
        http: The client session to post with.

    Returns:
        Seconds until another pass is worth making: 0 when a full batch was claimed (more may
        be due), else the sooner of the poll interval and the earliest retry just scheduled.
    """
    settings = state.settings
    sends = await _claim(state, utcnow())
    results = await asyncio.gather(
        *(_post(http, send, state.settings.webhook_allow_private_networks) for send in sends)
    )
    if not results:
        return settings.webhook_poll_seconds
    retry_in = await _record(state, results)
    if len(sends) == BATCH:
        return 0.0
    return min([settings.webhook_poll_seconds, *retry_in])


async def _claim(state: ServiceState, now: datetime) -> list[_Send]:
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(BATCH)
        .scalar_subquery()
    )
    async with state.writing() as session:
        # Moving next_attempt_at forward is the claim: a second sender (another replica)
        # re-checks the condition on the updated row and skips it.
        claimed = (
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id.in_(due),
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + CLAIM)
                .returning(WebhookDelivery.id)
                .execution_options(synchronize_session=False)
            )
        ).scalars()
        ids = list(claimed)
        if not ids:
            return []
        rows = await session.execute(
            select(WebhookDelivery, WebhookSubscription, Event)
            .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id.in_(ids))
            .order_by(WebhookDelivery.id)
        )
        return [
            _Send(
                delivery_id=delivery.id,
                subscription_id=sub.id,
                attempts=delivery.attempts,
                url=sub.url,
                secret=sub.secret,
                active=sub.active,
                event_id=f"{event.tenant_id}:{event.seq}",
                body=canonical(event_document(event)),
            )
            for delivery, sub, event in rows
        ]


async def _post(http: aiohttp.ClientSession, send: _Send, allow_private: bool) -> _Result:
    if not send.active:
        return _Result(send, "subscription deleted")
    # aiohttp skips the resolver for literal addresses, so the guard checks those here.
    refusal = None if allow_private else literal_refusal(URL(send.url).host or "")
    if refusal is not None:
        return _Result(send, refusal)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Goodbot-Event-Id": send.event_id,
        "X-Goodbot-Timestamp": timestamp,
        "X-Goodbot-Signature": signature(send.secret, timestamp, send.body),
    }
    try:
        # Redirects are not followed: the subscriber registered this URL, not another one.
        async with http.post(
            send.url, data=send.body, headers=headers, allow_redirects=False
        ) as response:
            if 200 <= response.status < 300:
                return _Result(send, None)
            return _Result(send, f"HTTP {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _Result(send, f"{type(exc).__name__}: {exc}"[:500])


async def _record(state: ServiceState, results: list[_Result]) -> list[float]:
    """Store each outcome; the delays of the retries scheduled."""
    settings = state.settings
    now = utcnow()
    retry_in: list[float] = []
    async with state.writing() as session:
        for result in results:
            send, attempts = result.send, result.send.attempts + 1
            values: dict[str, object] = {"attempts": attempts, "last_error": result.error}
            if result.error is None:
                values |= {"status": "delivered", "delivered_at": now}
            elif not send.active:
                values |= {"status": "cancelled", "attempts": send.attempts}
            elif attempts >= settings.webhook_max_attempts:
                values["status"] = "failed"
            else:
                delay = backoff(attempts, settings.webhook_backoff_base_seconds)
                values["next_attempt_at"] = now + timedelta(seconds=delay)
                retry_in.append(delay)
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == send.delivery_id, WebhookDelivery.status == "pending")
                .values(values)
                .execution_options(synchronize_session=False)
            )
            if result.error is not None and send.active:
                log.warning(
                    "webhook delivery attempt failed",
                    extra={
                        "delivery_id": send.delivery_id,
                        "subscription_id": send.subscription_id,
                        "event_id": send.event_id,
                        "attempt": attempts,
                        "error": result.error,
                        "status": values.get("status", "pending"),
                    },
                )
    return retry_in


async def _send_forever(state: ServiceState) -> None:
    wake = state.wakeups.setdefault("webhooks", asyncio.Event())
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS)
    connector = aiohttp.TCPConnector(
        **connector_kwargs(state.settings.webhook_allow_private_networks)
    )
    async with aiohttp.ClientSession(
        timeout=timeout, headers={"User-Agent": USER_AGENT}, connector=connector
    ) as http:
        while True:
            # Cleared before the pass, so a wake during the pass makes the next one immediate.
            wake.clear()
            try:
                pause = await deliver_due(state, http)
            except Exception:
                # The sender's outermost layer: a database hiccup must not end delivery for good.
                log.exception("webhook sender pass failed")
                pause = state.settings.webhook_poll_seconds
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await wake.wait()


async def webhook_sender(state: ServiceState) -> AsyncIterator[None]:
    """Run the webhook sender for the app's lifetime (an aiohttp cleanup context).

    The sender wakes right after a commit that queued deliveries, and every
    ``webhook_poll_seconds`` for retries and for deliveries queued by other replicas.

    Args:
        state: The service state the sender works with.
    """
    task = asyncio.create_task(_send_forever(state), name="webhook-sender")
    remove = on_deliveries_committed(state.engine, functools.partial(state.wake, "webhooks"))
    try:
        yield
    finally:
        remove()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
