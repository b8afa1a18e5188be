"""Teams egress: everything goodbot sends to Teams, proactively through the connector (channels).

Every send runs in a proactive turn of the Agents SDK (``CloudAdapter.continue_conversation``
from a saved conversation reference), which opens the connector at the conversation's service
URL with the bot's token. A call the connector answers 429, 5xx or not at all is tried again
(``Retry-After`` honoured, else exponential back-off); any other error is final and raised.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from microsoft_agents.activity import Activity, ActivityTypes, ConversationReference
from microsoft_agents.hosting.aiohttp import CloudAdapter
from microsoft_agents.hosting.core import TurnContext

from channels.teams_cards import attachment

log = logging.getLogger(__name__)

TRANSIENT: Final = frozenset({429, 500, 502, 503, 504})
"""Connector answers worth another try; any other error is final."""
LONGEST_WAIT: Final = 30.0
"""Most seconds waited before one retry, whatever ``Retry-After`` asks."""


def message(text: str) -> Activity:
    """A Markdown text message."""
    return Activity(type=ActivityTypes.message, text=text, text_format="markdown")


def card_message(card: Mapping[str, Any], summary: str = "") -> Activity:
    """A message carrying one Adaptive Card (``summary``: the notification's preview)."""
    activity = Activity(type=ActivityTypes.message, attachments=[attachment(card)])
    if summary:
        activity.summary = summary[:200]
    return activity


def retry_after(exc: aiohttp.ClientResponseError) -> float | None:
    """Seconds a 429 or 503 asks to wait (``Retry-After`` as seconds or a date), or None."""
    value = exc.headers.get("Retry-After") if exc.headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when else None


class Egress:
    """Proactive sends through the SDK's adapter, with retries on 429 and transient errors."""

    def __init__(
        self, adapter: CloudAdapter, app_id: str, *, attempts: int = 4, base_seconds: float = 0.5
    ) -> None:
        """Args:
        adapter: The SDK adapter (connection manager and token provider inside).
        app_id: The bot's Microsoft App ID.
        attempts: Tries per call on 429 and transient errors.
        base_seconds: First back-off when the connector gives no ``Retry-After``.
        """
        self.adapter = adapter
        self.app_id = app_id
        self.attempts = attempts
        self.base_seconds = base_seconds

    async def converse(
        self, reference: ConversationReference, callback: Callable[[TurnContext], Awaitable[None]]
    ) -> None:
        """Run ``callback`` in a proactive turn of the conversation (connector, token)."""
        continuation = reference.get_continuation_activity()
        # The SDK gives the continuation a fresh id, and every send would then be a reply to
        # that unknown activity; a reply goes to the message it answers, or to the chat.
        continuation.id = reference.activity_id
        await self.adapter.continue_conversation(self.app_id, continuation, callback)

    async def say(self, reference: ConversationReference, activities: Sequence[Activity]) -> None:
        """Send ``activities`` in order; a failure is logged, not raised."""

        async def send(ctx: TurnContext) -> None:
            for activity in activities:
                await self.send(ctx, activity)

        try:
            await self.converse(reference, send)
        except Exception:
            log.exception("a Teams message was not delivered")

    async def send(self, ctx: TurnContext, activity: Activity) -> None:
        """Send one activity in a proactive turn, retried."""
        await self.retrying(lambda: ctx.send_activity(activity))

    async def update(
        self, reference: ConversationReference, activity_id: str, card: Mapping[str, Any]
    ) -> None:
        """Replace a card message for everyone in the conversation; a failure is logged."""

        async def update(ctx: TurnContext) -> None:
            activity = card_message(card)
            activity.id = activity_id
            await self.retrying(lambda: ctx.update_activity(activity))

        try:
            await self.converse(reference, update)
        except Exception:
            log.exception("a Teams card was not updated", extra={"activity": activity_id})

    async def retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call`` again on 429 and transient errors, honouring ``Retry-After``; else raise."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except aiohttp.ClientResponseError as exc:
                if exc.status not in TRANSIENT or attempt == self.attempts:
                    raise
                delay = retry_after(exc)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == self.attempts:
                    raise
                delay = None
            wait = delay if delay is not None else self.base_seconds * 2 ** (attempt - 1)
            log.info("Teams connector busy; retrying", extra={"attempt": attempt, "wait": wait})
            await asyncio.sleep(min(wait, LONGEST_WAIT))
        raise AssertionError("unreachable")
