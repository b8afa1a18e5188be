"""Microsoft Teams channel over the Microsoft 365 Agents SDK for Python (channels).

One route, ``POST /api/messages``, on the gateway's aiohttp application carries every activity
the Azure Bot Service sends. It is verified in three gates (``channels.teams_auth``): goodbot's
precheck, the SDK's per-route ``jwt_authorization_decorator``, and goodbot's service-URL and
tenant check; a refusal is 401 or 403 and nothing reaches the SDK's adapter, the gateway or
the store. An unauthenticated request is audited as ``auth.refused`` (a bounded number of
times per source), a signed one from a tenant not allowed as ``message.refused``. Then:

* a message in a personal chat, or one that mentions goodbot in a group chat or channel (the
  mention is stripped), is admitted (stored durably, de-duplicated by the activity id) and
  acknowledged with 202 at once, without the SDK's adapter, which would open a connector and a
  token client for a turn that sends nothing; the turn runs in a background task, and its
  reply goes out proactively through the SDK (``CloudAdapter.continue_conversation``) with a
  typing indicator, split within Teams' size limit, retried on 429 and transient errors only;
* an invoke goes through the SDK's ``CloudAdapter`` to ``_Agent`` (an ``ActivityHandler``),
  since it is answered within the request: an ``adaptiveCard/action`` (``Action.Execute``)
  decides a confirmation for the clicker's own identity and is answered with the updated
  card; the card message is then updated for everyone. A click that changes nothing (someone
  else's, a second click, a stale card, a card from another conversation) is answered with a
  message saying why;
* the first contact in a conversation saves its conversation reference in the session store,
  and in a personal chat also under the sender's identity (``personal:<identity>``), where
  proactive notifications (``deliver``, a ``gateway.delivery.Deliverer``) find it.

Identity is ``<tenant id>:<Entra object id>`` (``from.aadObjectId``), never a display name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
import warnings
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from aiohttp import web
from microsoft_agents.activity import (
    Activity,
    ActivityTypes,
    AdaptiveCardInvokeResponse,
    AdaptiveCardInvokeValue,
    ConversationReference,
    InvokeResponse,
    SignInConstants,
)
from microsoft_agents.hosting.aiohttp import CloudAdapter, jwt_authorization_decorator
from microsoft_agents.hosting.core import ActivityHandler, TurnContext, TypingIndicator
from microsoft_agents.hosting.core.app.typing_indicator import TypingOptions

from channels.base import Admission, DecisionReport, InboundMessage, RefusedError, Turns
from channels.teams_auth import (
    CHANNEL,
    Credentials,
    IngressRefusal,
    check_activity,
    connection_manager,
    identity_of,
    precheck,
    tenant_of,
)
from channels.teams_cards import (
    ASK,
    CONFIRM,
    DENY,
    confirmation_card,
    final_card,
    final_line,
    notification_card,
    split_message,
    teams_markdown,
)
from channels.teams_egress import Egress, card_message
from channels.teams_egress import message as text_message
from channels.teams_sso import COMMAND as SIGN_IN_COMMAND
from channels.teams_sso import SignIn, SingleSignOn

log = logging.getLogger(__name__)

ROUTE: Final = "/api/messages"
BOT_SERVICE: Final = "https://api.botframework.com"
"""The Bot Framework token service (sign-in links and codes of the OAuth connections)."""
SDK_CONFIG_KEY: Final = "agent_configuration"
"""The app key the SDK's JWT decorator reads its configuration from (a plain string)."""
DECIDE_BUDGET: Final = 4.0
"""Seconds an invoke waits for a decision (and its execution) before answering 'running'."""
_SAVED_CAP: Final = 10_000
VERIFIED: Final = web.RequestKey("goodbot_teams_verified", bool)
"""Set on a request once the SDK's decorator has accepted its token."""


class References(Protocol):
    """Where conversation references are kept (``sessions.directory.Directory``)."""

    async def save_reference(
        self, channel: str, conversation_key: str, reference: Mapping[str, Any]
    ) -> None:
        """Store (or replace) the reference for a conversation."""
        ...

    async def reference(self, channel: str, conversation_key: str) -> dict[str, Any] | None:
        """The saved reference, or None."""
        ...


class TeamsChannel:
    """The Teams channel's route over a ``Turns`` implementation; also the Teams deliverer."""

    channel: str = CHANNEL
    """The channel name a ``gateway.delivery.Deliverer`` is registered under."""

    def __init__(
        self,
        turns: Turns,
        references: References,
        creds: Credentials,
        *,
        tenants: frozenset[str],
        max_concurrent_turns: int = 64,
        send_attempts: int = 4,
        retry_base_seconds: float = 0.5,
        typing_interval_seconds: float = 3.0,
        sso: tuple[str, SignIn] | None = None,
        token_service_url: str = BOT_SERVICE,
    ) -> None:
        """Wire the SDK adapter and the bot's credentials.

        Args:
            turns: The gateway.
            references: Where conversation references are saved.
            creds: The bot's app id, tenant and secret (no secret: development mode).
            tenants: Entra tenant ids (lower case) whose activities are accepted.
            max_concurrent_turns: Replies in the making at once (the gateway's
                ``turn_concurrency``); the other admitted messages wait without a connector.
            send_attempts: Tries per outbound activity on 429 and transient errors.
            retry_base_seconds: First back-off when the connector gives no ``Retry-After``.
            typing_interval_seconds: How often the typing indicator is repeated.
            sso: Single sign-on: the Azure Bot's OAuth connection name and where a person's
                token is exchanged on their behalf (the Graph client); None turns it off.
            token_service_url: The Bot Framework token service behind that connection.
        """
        self.turns = turns
        self.references = references
        self.creds = creds
        self.tenants = tenants
        self.typing = TypingOptions(
            initial_delay_ms=1000, interval_ms=int(typing_interval_seconds * 1000)
        )
        self.manager, self.auth = connection_manager(creds)
        self.sdk_config = self.manager.get_default_connection_configuration()
        self.issuers = frozenset(i.lower() for i in self.sdk_config.ISSUERS)
        self.adapter = CloudAdapter(
            connection_manager=self.manager,
            channel_service_client_factory_options={"token_service_endpoint": token_service_url},
        )
        # The SDK's default handler sends the exception's text to the user; errors are
        # handled (and logged) by the agent, and a proactive send must raise to its caller.
        self.adapter.on_turn_error = None
        self.egress = Egress(
            self.adapter, creds.app_id, attempts=send_attempts, base_seconds=retry_base_seconds
        )
        self.agent = _Agent(self)
        self.sso = (
            SingleSignOn(self.turns, self.egress, sso[0], sso[1], self._spawn) if sso else None
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_concurrent_turns)
        self._saved: dict[str, str] = {}
        self._verified = jwt_authorization_decorator(self._after_jwt)  # type: ignore[no-untyped-call]

    # Wiring.

    def install(self, app: web.Application) -> None:
        """Serve ``POST /api/messages`` on ``app``, with the SDK's configuration and lifecycle."""
        with warnings.catch_warnings():
            # The SDK's decorator reads this plain string key; aiohttp recommends AppKeys.
            warnings.simplefilter("ignore", web.NotAppKeyWarning)
            app[SDK_CONFIG_KEY] = self.sdk_config
        app.router.add_post(ROUTE, self.messages)

        async def start(_: web.Application) -> None:
            await self.start()

        async def stop(_: web.Application) -> None:
            await self.close()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)

    async def start(self) -> None:
        """Start building the msal client (OIDC discovery) in the background: an identity
        provider that is slow or down must not hold up the gateway's start."""

        async def warm() -> None:
            try:
                await self.auth.warm_up()
            except Exception as exc:
                # The first outbound message tries again; replies are late, not lost.
                log.warning("Teams token client not ready", extra={"error": type(exc).__name__})

        self._spawn(warm())

    async def close(self) -> None:
        """Cancel background work (admitted turns are recovered at the next start)."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.auth.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # Ingress.

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/messages``: the three gates, then the SDK's adapter."""
        try:
            precheck(request.headers.get("Authorization"), self.issuers)
        except IngressRefusal as exc:
            return await self._refused(request, exc)
        response: web.StreamResponse = await self._verified(request)
        if response.status == 401 and not request.get(VERIFIED):
            # The SDK refused the token (signature, expiry, audience, issuer).
            return await self._refused(
                request, IngressRefusal(401, "unauthorized", "the token did not validate")
            )
        return response

    async def _after_jwt(self, request: web.Request) -> web.StreamResponse:
        request[VERIFIED] = True
        claims = request["claims_identity"]
        try:
            activity = Activity.model_validate(await request.json())
        except (ValueError, TypeError):
            return web.json_response({"error": "not an activity"}, status=400)
        try:
            check_activity(claims, activity, self.tenants)
        except IngressRefusal as exc:
            return await self._refused(request, exc, activity)
        if activity.type in _CONVERSATIONAL:
            try:
                activity.get_conversation_reference()
            except ValueError:  # pydantic's ValidationError: no conversation to answer in
                return web.json_response({"error": "no conversation to answer in"}, status=400)
        if activity.type == ActivityTypes.message:
            # Nothing is sent within a message's turn (the reply goes out proactively), so the
            # SDK's adapter, which opens a connector and a token client for every activity,
            # is not needed to admit one: the acknowledgement stays cheap.
            try:
                incoming = self.incoming(activity)
            except (ValueError, TypeError, KeyError, AttributeError):
                # Signed, but not a message goodbot can read (entities, mentions): the request's
                # fault. An admission that fails (the store down) is a 500, and Teams retries.
                log.info("an unreadable Teams message", exc_info=True)
                return web.json_response({"error": "the message cannot be read"}, status=400)
            if incoming is not None:
                await self.message(activity, *incoming)
            return web.Response(status=202)
        if activity.type in _CONVERSATIONAL:
            await self.first_contact(activity)
            return web.Response(status=202)
        # Invokes are answered within the request (an updated card): the SDK's turn.
        try:
            response = await self.adapter.process(request, self.agent)
        except Exception:
            # The outermost layer of an invoke: what raises here is the SDK refusing an
            # activity it cannot take (the agent answers its own failures within the invoke).
            log.exception("a Teams invoke could not be processed", extra={"invoke": activity.name})
            return web.json_response({"error": "the invoke cannot be processed"}, status=400)
        if response is not None and response.status == 501:
            # The SDK's answer to an invoke nothing handles (no or another name, a value that is
            # no card action): the request's fault, not the server's (found by fuzzing).
            return web.json_response({"error": "unsupported invoke"}, status=400)
        return response if response is not None else web.Response(status=202)

    def incoming(self, activity: Activity) -> tuple[str, str, str] | None:
        """A message's text (mention stripped), sender name and event id; None when it is not
        for goodbot (a group message that does not mention it, or no text)."""
        conversation = activity.conversation
        kind = (conversation.conversation_type if conversation else None) or "personal"
        text = activity.text or ""
        if kind != "personal":
            # In group chats and channels goodbot answers only when mentioned.
            if not activity.is_recipient_mentioned():
                return None
            text = activity.remove_recipient_mention()
        text = _MENTION_TAG.sub("", text).replace("&nbsp;", " ").strip()
        if not text:
            return None
        owner = (activity.from_property.name if activity.from_property else None) or "you"
        event_id = activity.id or f"{conversation.id if conversation else ''}:{uuid.uuid4().hex}"
        return text, owner, event_id

    async def message(self, activity: Activity, text: str, owner: str, event_id: str) -> None:
        """A message for goodbot: ``/signin`` (single sign-on), or admitted as a turn."""
        personal = (activity.conversation.conversation_type or "personal") == "personal"
        if self.sso is not None and personal and text.lower() == SIGN_IN_COMMAND:
            principal = self.sso.principal(activity)
            if principal is not None:  # an unknown sender is refused by admission below
                self.sso.offer(activity, principal)
                return
        await self.admit(activity, text, event_id, owner)

    async def first_contact(self, activity: Activity) -> None:
        """The app installed or a conversation joined: remember it, for a known person."""
        tenant = tenant_of(activity) or ""
        identity = self.identity(tenant, activity)
        sender = self.turns.sender(CHANNEL, identity) if identity else None
        if sender is not None:
            await self.remember(activity, tenant, identity)

    async def _refused(
        self, request: web.Request, exc: IngressRefusal, activity: Activity | None = None
    ) -> web.Response:
        if exc.status == 401 or activity is None:
            # Unauthenticated: counted and audited a bounded number of times per source, never
            # blocked by address (every real activity comes from the Bot Service's addresses).
            await self.turns.sign_in_failed(
                CHANNEL, request.remote or "unknown", exc.reason, block=False
            )
        else:
            # A signed activity from a tenant not allowed: audited like any refused message.
            tenant = tenant_of(activity) or ""
            claimed = InboundMessage(
                channel=CHANNEL,
                identity=self.identity(tenant, activity),
                event_id=activity.id or "",
                conversation_key=self.conversation_key(tenant, activity),
                text="",
            )
            await self.turns.refuse(claimed, f"teams.{exc.code}", exc.reason)
        return web.json_response({"error": exc.reason}, status=exc.status)

    # Conversations.

    @staticmethod
    def conversation_key(tenant: str, activity: Activity) -> str:
        """The gateway's key for a Teams conversation (a channel thread is its own)."""
        return f"{tenant}:{activity.conversation.id if activity.conversation else ''}"

    @staticmethod
    def identity(tenant: str, activity: Activity) -> str:
        """``<tenant id>:<Entra object id>`` of the sender ('' when Teams sent no object id)."""
        return identity_of(tenant, activity)

    async def remember(self, activity: Activity, tenant: str, identity: str) -> None:
        """Save the conversation reference on first contact (and when its service URL moves);
        a personal chat's also under ``personal:<identity>``, where ``deliver`` finds it."""
        reference = activity.get_conversation_reference()
        reference.activity_id = None
        keys = [self.conversation_key(tenant, activity)]
        personal = (activity.conversation.conversation_type or "personal") == "personal"
        if personal and identity:
            keys.append(f"personal:{identity}")
        saved = reference.model_dump(mode="json", by_alias=True, exclude_none=True)
        for key in keys:
            if self._saved.get(key) == reference.service_url:
                continue
            await self.references.save_reference(CHANNEL, key, saved)
            if len(self._saved) >= _SAVED_CAP:
                self._saved.clear()
            self._saved[key] = str(reference.service_url)

    async def admit(self, activity: Activity, text: str, event_id: str, owner: str) -> None:
        """Admit a message and start its turn; a refusal is told in the conversation."""
        tenant = tenant_of(activity) or ""
        identity = self.identity(tenant, activity)
        message = InboundMessage(
            channel=CHANNEL,
            identity=identity,
            event_id=event_id,
            conversation_key=self.conversation_key(tenant, activity),
            text=text,
            channel_message_id=activity.id,
        )
        reference = activity.get_conversation_reference()
        try:
            admission = await self.turns.admit(message)
        except RefusedError as exc:
            log.info("refused a Teams message", extra={"code": exc.code})
            self._spawn(
                self.egress.say(
                    reference, [text_message(f"Sorry, I can't take that: {exc.message}.")]
                )
            )
            return
        if admission.duplicate:
            log.info("ignored a repeated Teams delivery", extra={"event_id": event_id})
            return
        await self.remember(activity, tenant, identity)
        self._spawn(self._run(admission, reference, owner))

    async def _run(
        self, admission: Admission, reference: ConversationReference, owner: str
    ) -> None:
        async with self._slots:
            turn = asyncio.ensure_future(self._turn(admission, owner))

            async def reply(ctx: TurnContext) -> None:
                async with TypingIndicator(ctx, typing_options=self.typing):
                    activities = await asyncio.shield(turn)
                for activity in activities:
                    await self.egress.send(ctx, activity)

            try:
                await self.egress.converse(reference, reply)
            except Exception:
                log.exception("a Teams reply was not delivered", extra={"id": admission.message_id})
            finally:
                await turn

    async def _turn(self, admission: Admission, owner: str) -> list[Activity]:
        """The turn's reply as Teams activities (it never raises: the outermost layer)."""
        out: list[Activity] = [
            card_message(notification_card(note), str(note.get("text") or ""))
            for note in admission.notifications
        ]

        async def emit(_: dict[str, Any]) -> None:
            # Teams gets the whole reply at the end, with a typing indicator meanwhile.
            return None

        try:
            report = await self.turns.run(admission, emit)
        except RefusedError as exc:
            return [*out, text_message(f"Sorry, I can't do that: {exc.message}.")]
        except Exception:
            log.exception("a Teams turn failed", extra={"message_id": admission.message_id})
            return [*out, text_message("Sorry, something went wrong; the operators have the log.")]
        out += [text_message(part) for part in split_message(teams_markdown(report.reply))]
        confirmation = report.confirmation
        if confirmation is not None and confirmation.get("state") == "pending":
            card = confirmation_card(
                confirmation, owner=owner, conversation=admission.message.conversation_key
            )
            out.append(card_message(card, str(confirmation.get("summary") or "")))
        return out

    # Confirmations.

    async def decide(
        self, ctx: TurnContext, value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse:
        """Answer an ``Action.Execute`` on a card: decide, or say why nothing changed."""
        activity = ctx.activity
        verb = value.action.verb or ""
        data = dict(value.action.data or {})
        clicker = (activity.from_property.name if activity.from_property else None) or "someone"
        tenant = tenant_of(activity) or ""
        if verb == ASK:
            text = str(data.get("text") or "").strip()
            if text:
                await self.admit(
                    activity, text, f"invoke:{activity.id or uuid.uuid4().hex}", clicker
                )
            return _say_response("On it: the answer follows in this chat.")
        if verb not in (CONFIRM, DENY):
            return _say_response("goodbot does not know this action; nothing changed.")
        if data.get("conversation") != self.conversation_key(tenant, activity):
            return _say_response(
                "This card belongs to another conversation; nothing changed. "
                "Decide it where it was proposed."
            )
        decision: Literal["confirm", "deny"] = "confirm" if verb == CONFIRM else "deny"
        work = asyncio.ensure_future(
            self.turns.decide(
                CHANNEL,
                self.identity(tenant, activity),
                str(data.get("confirmation_id") or ""),
                decision,
                str(data.get("arguments_hash") or "") or None,
            )
        )
        reference = activity.get_conversation_reference()
        reference.activity_id = None
        card_id = activity.reply_to_id
        done, _ = await asyncio.wait({work}, timeout=DECIDE_BUDGET)
        if not done:
            self._spawn(self._late(work, reference, card_id, data, clicker))
            return _say_response("Working on it; the card shows the result when it is done.")
        try:
            report = work.result()
        except RefusedError as exc:
            return _say_response(f"Nothing changed: {exc.message}.")
        except Exception:
            log.exception(
                "a Teams decision failed", extra={"confirmation": data.get("confirmation_id")}
            )
            return _say_response("Sorry, something went wrong; nothing was decided.")
        return self._decided(report, reference, card_id, data, clicker)

    def _decided(
        self,
        report: DecisionReport,
        reference: ConversationReference,
        card_id: str | None,
        data: Mapping[str, Any],
        clicker: str,
    ) -> AdaptiveCardInvokeResponse:
        owner = str(data.get("owner") or "the person who asked")
        if report.outcome == "wrong_principal":
            return _say_response(f"Only {owner} can confirm or deny this; nothing changed.")
        current = report.confirmation
        line = final_line(str(current.get("state")), report.result, clicker) if current else None
        if current is None or line is None:
            return _say_response(f"Nothing changed: {report.reason}.")
        if report.outcome in ("confirmed", "denied", "expired"):
            card = final_card(current, owner=owner, line=line)
            if card_id:
                self._spawn(self.egress.update(reference, card_id, card))
            return _card_response(card)
        # A second click or a stale card: show where it stands, to the clicker only.
        note = f"Nothing changed: {report.reason}."
        return _card_response(final_card(current, owner=owner, line=line, note=note))

    async def _late(
        self,
        work: asyncio.Future[DecisionReport],
        reference: ConversationReference,
        card_id: str | None,
        data: Mapping[str, Any],
        clicker: str,
    ) -> None:
        try:
            report = await work
        except Exception:
            log.exception(
                "a Teams decision failed", extra={"confirmation": data.get("confirmation_id")}
            )
            return
        current = report.confirmation
        line = final_line(str(current.get("state")), report.result, clicker) if current else None
        if current is not None and line is not None and card_id:
            owner = str(data.get("owner") or "the person who asked")
            await self.egress.update(
                reference, card_id, final_card(current, owner=owner, line=line)
            )

    # Notifications (``gateway.delivery.Deliverer``).

    async def deliver(
        self, principal: str, identities: Sequence[str], items: Sequence[Mapping[str, Any]]
    ) -> None:
        """Send notifications as cards to each of the person's personal chats with goodbot.

        Raises:
            LookupError: None of the identities ever talked to goodbot in a personal chat, so
                there is no conversation to post into yet (the delivery duty tries later, and
                the person's next message shows them).
            Exception: Whatever the connector raised after its retries.
        """
        references = []
        for identity in identities:
            saved = await self.references.reference(CHANNEL, f"personal:{identity}")
            if saved is not None:
                references.append(ConversationReference.model_validate(saved))
        if not references:
            raise LookupError(f"{principal} has no personal chat with goodbot on Teams yet")

        async def send(ctx: TurnContext) -> None:
            for item in items:
                card = notification_card(item)
                await self.egress.send(ctx, card_message(card, str(item.get("text") or "")))

        for reference in references:
            await self.egress.converse(reference, send)
        log.info("notifications sent", extra={"principal": principal, "count": len(items)})


def _say_response(text: str) -> AdaptiveCardInvokeResponse:
    """An invoke answer that shows a message to the clicker and leaves the card as it is."""
    return AdaptiveCardInvokeResponse(
        status_code=200, type="application/vnd.microsoft.activity.message", value=text
    )


def _card_response(card: Mapping[str, Any]) -> AdaptiveCardInvokeResponse:
    """An invoke answer that replaces the card for the clicker."""
    return AdaptiveCardInvokeResponse(
        status_code=200, type="application/vnd.microsoft.card.adaptive", value=dict(card)
    )


_CONVERSATIONAL: Final = frozenset(
    {ActivityTypes.message, ActivityTypes.conversation_update, ActivityTypes.installation_update}
)
_MENTION_TAG: Final = re.compile(r"</?at>", re.IGNORECASE)


class _Agent(ActivityHandler):
    """The SDK's view of goodbot, for the activities answered within the request (invokes)."""

    def __init__(self, channel: TeamsChannel) -> None:
        self.channel = channel

    async def on_turn(self, turn_context: Any) -> None:
        try:
            await super().on_turn(turn_context)
        except Exception:
            # The outermost layer of an invoke (a malformed one the SDK cannot even answer):
            # logged; with no invoke response set, the request is answered 400.
            log.exception("a Teams invoke failed", extra={"invoke": turn_context.activity.name})

    async def on_invoke_activity(self, turn_context: Any) -> InvokeResponse | None:
        sso = self.channel.sso
        name = turn_context.activity.name
        if sso is not None and name == SignInConstants.token_exchange_operation_name:
            return await sso.exchange(turn_context)
        if sso is not None and name == SignInConstants.verify_state_operation_name:
            return await sso.verify(turn_context)
        response: InvokeResponse | None = await super().on_invoke_activity(turn_context)
        return response

    async def on_adaptive_card_invoke(
        self, turn_context: Any, invoke_value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse:
        return await self.channel.decide(turn_context, invoke_value)
