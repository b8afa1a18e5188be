"""Slack channel: Events API, interactivity and ``/goodbot`` over slack-bolt (channels).

One route, ``POST /slack/events``, on the gateway's aiohttp application carries everything
Slack sends. Bolt verifies each request's signature (HMAC-SHA256 of ``v0:{ts}:{body}`` with the
signing secret, timestamps within five minutes) before any listener runs, so a forged,
stale or tampered request gets 401 and nothing is admitted; the refusal is audited
(``auth.refused``, once per source address and minute).

Slack wants an answer within three seconds and retries otherwise (``X-Slack-Retry-Num``), so a
listener admits the message first (stored durably, de-duplicated by the event id), answers,
and runs the turn in a background task whose reply goes out with ``chat.postMessage``:

* ``message.im``: a direct message; the reply goes to the same DM (and thread, if any).
* ``app_mention``: a mention in a channel, with the mention stripped; the reply goes to its
  thread, and the thread is the conversation.
* ``/goodbot <text>``: the reply goes to the person's DM with the bot.

Notifications (approvals waiting, paused rollouts, …) reach people as direct messages: the
channel is a push ``Deliverer`` for ``gateway.delivery``. Every Web API call is retried a few
times when Slack answers 429 (after its ``Retry-After``), 5xx or drops the connection.

A proposed change is posted as a Block Kit message with its summary, exact arguments and
Confirm / Deny buttons whose value carries the confirmation id and arguments hash. A click is
decided for the clicker's own identity (``<team id>:<user id>``, never a name), so only the
bound principal can confirm; the message is then updated to its final state, and a click that
changes nothing (someone else's, a second click, a stale button) is answered ephemerally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from channels.base import Admission, DecisionReport, InboundMessage, RefusedError, Turns

log = logging.getLogger(__name__)

CHANNEL: Final = "slack"
CONFIRM: Final = "goodbot_confirm"
DENY: Final = "goodbot_deny"
ACTIONS_BLOCK: Final = "goodbot_actions"
_MENTION: Final = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
_LINK: Final = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD: Final = re.compile(r"\*\*(.+?)\*\*")
_HEADING: Final = re.compile(r"^#{1,6}\s+(.+)$", re.MULTILINE)
MALFORMED: Final = (AttributeError, TypeError, LookupError, ValueError)
"""What bolt's parsing raises on a body that is not shaped like Slack's."""
_SECTION_LIMIT: Final = 2900
"""Block Kit section text is limited to 3,000 characters."""
_PER_MESSAGE: Final = 20
"""Notifications per Slack message (a message holds at most 50 blocks; two each)."""
RETRIES: Final = 3
"""Retries of a Web API call answered 429 (after its Retry-After), 5xx or cut off."""


def retry_handlers() -> list[AsyncRetryHandler]:
    """Retry throttled (429, honouring Retry-After) and transient failures, a few times."""
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=RETRIES),
        AsyncRateLimitErrorRetryHandler(max_retry_count=RETRIES),
        AsyncServerErrorRetryHandler(max_retry_count=RETRIES),
    ]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a turn's reply goes."""

    channel: str
    thread_ts: str | None
    user: str
    """The Slack user the turn is for (named in the confirmation's buttons)."""


def mrkdwn(markdown: str) -> str:
    """Slack's mrkdwn for the gateway's Markdown replies (escapes, bold, links, headings)."""
    text = markdown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _HEADING.sub(r"**\1**", text)
    text = _BOLD.sub(r"*\1*", text)
    return _LINK.sub(r"<\2|\1>", text)


def _clip(text: str, limit: int = _SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def confirmation_blocks(confirmation: dict[str, Any], user: str) -> list[dict[str, Any]]:
    """A pending confirmation as Block Kit: summary, exact arguments, Confirm and Deny."""
    arguments = json.dumps(confirmation.get("arguments", {}), indent=2, sort_keys=True)
    value = f"{confirmation['id']}|{confirmation.get('arguments_hash') or ''}|{user}"
    return [
        {
            "type": "section",
            "block_id": "goodbot_summary",
            "text": {
                "type": "mrkdwn",
                "text": _clip(f":warning: *Confirm:* {mrkdwn(str(confirmation['summary']))}"),
            },
        },
        {
            "type": "section",
            "block_id": "goodbot_arguments",
            "text": {
                "type": "mrkdwn",
                "text": _clip(f"*{confirmation['tool']}*\n```{arguments}```"),
            },
        },
        {
            "type": "context",
            "block_id": "goodbot_context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"For <@{user}> · expires {confirmation.get('expires_at')} · "
                    f"id `{confirmation['id']}`",
                }
            ],
        },
        {
            "type": "actions",
            "block_id": ACTIONS_BLOCK,
            "elements": [
                {
                    "type": "button",
                    "action_id": CONFIRM,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Confirm"},
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": DENY,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Deny"},
                    "value": value,
                },
            ],
        },
    ]


def notification_blocks(note: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A notification as a section (its text, already free of markup) and a context line."""
    topic = str(note.get("topic") or "notification")
    when = str(note.get("created_at") or "")
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(mrkdwn(str(note["text"])))}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": mrkdwn(f"{topic} · {when}".strip(" ·"))}],
        },
    ]


def final_state(report: DecisionReport, clicker: str) -> str | None:
    """The line that replaces the buttons once a confirmation is settled, or None."""
    if report.outcome == "confirmed":
        result = report.result or {}
        if result.get("status", "ok") == "ok":
            done = f"\n{mrkdwn(str(result['text']))}" if result.get("text") else ""
            return f":white_check_mark: Confirmed by <@{clicker}> and done.{done}"
        return f":x: Confirmed by <@{clicker}>, but it failed: {mrkdwn(str(result.get('text')))}"
    if report.outcome == "denied":
        return f":no_entry_sign: Denied by <@{clicker}>. Nothing was changed."
    if report.outcome == "expired":
        return ":hourglass: Expired before it was confirmed. Nothing was changed."
    return None


@dataclass
class SlackChannel:
    """The Slack channel's route over a ``Turns`` implementation."""

    turns: Turns
    signing_secret: str
    bot_token: str
    api_base_url: str | None = None
    """The Web API's base URL (``…/api/``); None is Slack's."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """Turns and decisions running after their acknowledgement."""
    socket: AsyncSocketModeHandler | None = None
    """The Socket Mode connection, when started."""

    def __post_init__(self) -> None:
        kwargs: dict[str, Any] = {"token": self.bot_token, "retry_handlers": retry_handlers()}
        if self.api_base_url:
            kwargs["base_url"] = self.api_base_url.rstrip("/") + "/"
        self.client = AsyncWebClient(**kwargs)
        # Listeners run before the HTTP answer so a message is stored before Slack hears 200;
        # each listener only admits and hands the turn to a task, well within Slack's 3 s.
        self.bolt = AsyncApp(
            signing_secret=self.signing_secret,
            client=self.client,
            process_before_response=True,
            logger=log,
        )
        self.bolt.error(self._on_error)
        self.bolt.event("message")(self._on_message)
        self.bolt.event("app_mention")(self._on_mention)
        self.bolt.command("/goodbot")(self._on_command)
        self.bolt.action(re.compile(f"^({CONFIRM}|{DENY})$"))(self._on_action)

    async def start(self) -> None:
        """Open the one HTTP session every Web API call reuses.

        slack_sdk opens (and closes) a new session, hence a new TLS connection, per call when
        it is given none: most of a turn's cost under load.
        """
        if self.client.session is None:
            self.client.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.client.timeout)
            )

    async def start_socket_mode(self, app_token: str) -> None:
        """Receive over Socket Mode too: Slack's WebSocket, opened with the app-level token.

        The same listeners run; Slack authenticates the connection instead of signing each
        request, so no ``/slack/events`` route is needed. ``close`` disconnects.
        """
        self.socket = AsyncSocketModeHandler(self.bolt, app_token, logger=log)
        await self.socket.connect_async()  # type: ignore[no-untyped-call]  # bolt leaves it untyped

    def routes(self) -> list[web.RouteDef]:
        """The channel's route, to add to the gateway's application."""
        return [web.post("/slack/events", self.events)]

    async def events(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: verified and dispatched by bolt; a request that fails
        verification (401) is audited, bounded per source (``Turns.sign_in_failed``)."""
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if stamp and not stamp.isdecimal():
            # slack_sdk's verifier raises on a timestamp that is not a number (bolt: 500).
            response = BoltResponse(status=401, body='{"error":"invalid request"}')
        else:
            try:
                response = await self.bolt.async_dispatch(await to_bolt_request(request))
            except MALFORMED as exc:
                # Bolt reads ids out of the body while building the request, and its error
                # handling reads the body again ("event": null escapes it).
                refused = await self._on_error(exc)
                assert refused is not None
                response = refused
        if response.status == 401:
            # Counted and audited, never blocked: behind a proxy every request, Slack's own
            # included, comes from one address.
            source = request.remote or "unknown"
            await self.turns.sign_in_failed(CHANNEL, source, "signature not verified", block=False)
        return await to_aiohttp_response(response)

    async def _on_error(self, error: Exception) -> BoltResponse | None:
        """Bolt's error handler: a signed body that is not one of Slack's shapes (``"event":
        null``, a list where an object goes) makes bolt's parsing raise; that is 400, not the
        500 that would make Slack retry it. Any other failure stays 500, so Slack retries."""
        if isinstance(error, MALFORMED):
            log.warning("refused a malformed Slack request", extra={"error": repr(error)[:200]})
            return BoltResponse(status=400, body='{"error":"malformed request"}')
        log.error("a Slack request failed", exc_info=error)
        return None

    async def close(self) -> None:
        """Cancel the work still running (admitted turns are recovered at the next start)."""
        if self.socket is not None:
            await self.socket.close_async()  # type: ignore[no-untyped-call]
            self.socket = None
        if self.client.session is not None:
            await self.client.session.close()
            self.client.session = None
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # Proactive notifications (``gateway.delivery.Deliverer``).

    @property
    def channel(self) -> str:
        """The outbox's name for this channel."""
        return CHANNEL

    async def deliver(
        self, principal: str, identities: Sequence[str], items: Sequence[Mapping[str, Any]]
    ) -> None:
        """Post notifications to each of the person's Slack identities as direct messages.

        Raises:
            SlackApiError: Slack refused a post (after the client's own retries), so the
                delivery duty tries again later.
        """
        for identity in identities:
            user = identity.partition(":")[2]
            for start in range(0, len(items), _PER_MESSAGE):
                batch = items[start : start + _PER_MESSAGE]
                blocks = [block for note in batch for block in notification_blocks(note)]
                text = "\n".join(str(note.get("text") or "") for note in batch)
                # Posting to a user id lands in the person's direct messages with the app.
                await self.client.chat_postMessage(channel=user, text=_clip(text), blocks=blocks)
        log.info(
            "notifications posted",
            extra={"principal": principal, "count": len(items), "identities": len(identities)},
        )

    # Inbound.

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], request: AsyncBoltRequest
    ) -> None:
        # Edits, joins and bot posts arrive as subtypes; only people's new DMs are turns.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        thread = event.get("thread_ts")
        await self._admit_and_run(
            body,
            event,
            request,
            text=str(event.get("text") or ""),
            conversation=f"{event['channel']}:{thread}" if thread else str(event["channel"]),
            target=Target(str(event["channel"]), thread, str(event["user"])),
        )

    async def _on_mention(
        self, body: dict[str, Any], event: dict[str, Any], request: AsyncBoltRequest
    ) -> None:
        if event.get("bot_id") or not event.get("user"):
            return
        thread = str(event.get("thread_ts") or event["ts"])
        await self._admit_and_run(
            body,
            event,
            request,
            text=_MENTION.sub("", str(event.get("text") or "")).strip(),
            conversation=f"{event['channel']}:{thread}",
            target=Target(str(event["channel"]), thread, str(event["user"])),
        )

    async def _admit_and_run(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        request: AsyncBoltRequest,
        *,
        text: str,
        conversation: str,
        target: Target,
    ) -> None:
        team = str(event.get("team") or body.get("team_id") or "")
        event_id = str(body.get("event_id") or f"{event['channel']}:{event.get('ts')}")
        retries = request.headers.get("x-slack-retry-num") or []
        retry = retries[0] if retries else None
        message = InboundMessage(
            channel=CHANNEL,
            identity=f"{team}:{target.user}",
            event_id=event_id,
            conversation_key=f"{team}:{conversation}",
            text=text,
            channel_message_id=str(event.get("ts") or "") or None,
        )
        await self._admit(message, target, retry=retry)

    async def _admit(
        self, message: InboundMessage, target: Target, *, retry: str | None, tell: bool = True
    ) -> RefusedError | None:
        """Admit and start the turn; a refusal is returned (and told in Slack if ``tell``)."""
        if not message.text.strip():
            return None
        try:
            admission = await self.turns.admit(message)
        except RefusedError as exc:
            # Slack must still hear 200, or it retries a refusal three more times.
            log.info("refused a Slack message", extra={"code": exc.code, "retry": retry})
            if tell:
                self._spawn(self._post(target, f"Sorry, I can't take that: {exc.message}."))
            return exc
        if admission.duplicate:
            log.info(
                "ignored a repeated Slack delivery",
                extra={"event_id": message.event_id, "retry": retry},
            )
            return None
        self._spawn(self._run(admission, target))
        return None

    async def _on_command(self, ack: Any, body: dict[str, Any], command: dict[str, Any]) -> None:
        text = str(command.get("text") or "").strip()
        if not text:
            await ack("Ask me something, for example `/goodbot what is pending my approval?`")
            return
        team, user = str(command.get("team_id")), str(command["user_id"])
        # Slash commands carry no event id; the trigger id is unique per invocation.
        message = InboundMessage(
            channel=CHANNEL,
            identity=f"{team}:{user}",
            event_id=f"command:{command.get('trigger_id')}",
            conversation_key=f"{team}:{user}:command",
            text=text,
        )
        refused = await self._admit(message, Target(user, None, user), retry=None, tell=False)
        if refused is not None:
            await ack(f"Sorry, I can't take that: {refused.message}.")
            return
        await ack("On it: the answer comes in your direct messages with me.")

    async def _run(self, admission: Admission, target: Target) -> None:
        try:
            for note in admission.notifications:
                await self._post(target, mrkdwn(str(note.get("text") or note)))

            async def emit(_: dict[str, Any]) -> None:
                # Slack gets the whole reply at the end; progress is not streamed.
                return None

            report = await self.turns.run(admission, emit)
        except RefusedError as exc:
            await self._post(target, f"Sorry, I can't do that: {exc.message}.")
            return
        except Exception:
            # The outermost layer of a Slack turn: say so politely, log with the exception.
            log.exception("a Slack turn failed", extra={"message_id": admission.message_id})
            await self._post(target, "Sorry, something went wrong; the operators have the log.")
            return
        confirmation = report.confirmation
        if confirmation is not None and confirmation.get("state") == "pending":
            blocks = [
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": _clip(mrkdwn(report.reply))},
                },
                *confirmation_blocks(confirmation, target.user),
            ]
            await self._post(target, report.reply, blocks)
        else:
            await self._post(target, mrkdwn(report.reply))

    async def _post(
        self, target: Target, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        try:
            await self.client.chat_postMessage(
                channel=target.channel, thread_ts=target.thread_ts, text=text, blocks=blocks
            )
        except SlackApiError as exc:
            log.warning("chat.postMessage failed", extra={"error": exc.response.get("error")})

    # Confirmations.

    async def _on_action(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self._spawn(self._decide(body, action))

    async def _decide(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        user = body.get("user") or {}
        clicker = str(user.get("id"))
        team = str(user.get("team_id") or (body.get("team") or {}).get("id") or "")
        channel = str(
            (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        )
        message = body.get("message") or {}
        ts = str(message.get("ts") or (body.get("container") or {}).get("message_ts"))
        confirmation_id, _, rest = str(action.get("value") or "").partition("|")
        hashed, _, owner = rest.partition("|")
        decision: Literal["confirm", "deny"] = (
            "confirm" if action["action_id"] == CONFIRM else "deny"
        )
        try:
            report = await self.turns.decide(
                CHANNEL, f"{team}:{clicker}", confirmation_id, decision, hashed or None
            )
        except RefusedError as exc:
            await self._ephemeral(channel, clicker, f"Nothing changed: {exc.message}.")
            return
        except Exception:
            log.exception("a Slack decision failed", extra={"confirmation": confirmation_id})
            await self._ephemeral(
                channel, clicker, "Sorry, something went wrong; nothing was decided."
            )
            return
        if report.outcome == "wrong_principal":
            who = f"<@{owner}>" if owner else "the person who asked"
            await self._ephemeral(channel, clicker, f"Only {who} can confirm or deny this.")
            return
        line = final_state(report, clicker)
        if line is None:
            await self._ephemeral(channel, clicker, f"Nothing changed: {report.reason}.")
            return
        if report.outcome == "expired":
            await self._ephemeral(channel, clicker, f"Nothing changed: {report.reason}.")
        kept = [b for b in message.get("blocks") or [] if b.get("block_id") != ACTIONS_BLOCK]
        blocks = [*kept, {"type": "section", "text": {"type": "mrkdwn", "text": _clip(line)}}]
        try:
            await self.client.chat_update(channel=channel, ts=ts, text=line, blocks=blocks)
        except SlackApiError as exc:
            log.warning("chat.update failed", extra={"error": exc.response.get("error")})

    async def _ephemeral(self, channel: str, user: str, text: str) -> None:
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as exc:
            log.warning("chat.postEphemeral failed", extra={"error": exc.response.get("error")})
