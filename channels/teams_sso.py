"""Teams single sign-on: a person's Teams token exchanged for a delegated Graph token (channels).

Every way in ends in ``SignIn.sign_in(principal, assertion)``, the gateway's Graph client, which
exchanges the person's token for our app on their behalf (msal on-behalf-of) and keeps a
delegated Graph token per person (``tools.graph_auth``). Only a known principal signs in, as
the sender's ``<tenant id>:<object id>``:

* ``signin/tokenExchange`` (invoke): Teams hands over the person's token silently after an
  OAuthCard naming a token-exchange resource. Answered 200 with the exchange's id when the
  on-behalf-of exchange worked; otherwise 412 with a ``failureDetail`` (Teams then offers the
  card's sign-in button) and the sign-in card is sent again: the fallback. Teams sends the same
  exchange from every client the person has open; a repeated id is answered 200 and not
  exchanged again.
* ``signin/verifyState`` (invoke): the code the sign-in button's web flow ends with; the token
  comes from the Bot Framework token service (the Azure Bot's OAuth connection).
* ``/signin`` in a personal chat: the sign-in card, an OAuthCard whose link and token-exchange
  resource come from the token service, or a sign-in at once when the service holds a token.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from microsoft_agents.activity import (
    ActionTypes,
    Activity,
    ActivityTypes,
    CardAction,
    InvokeResponse,
    OAuthCard,
)
from microsoft_agents.hosting.core import CardFactory, ChannelAdapter, TurnContext
from microsoft_agents.hosting.core.connector.client import UserTokenClient

from channels.base import Turns
from channels.teams_auth import CHANNEL, identity_of, tenant_of
from channels.teams_egress import Egress, message

log = logging.getLogger(__name__)

COMMAND: Final = "/signin"
"""What a person types in a personal chat to get the sign-in card."""
SIGNED_IN: Final = "Signed in: goodbot can now use your calendar on your behalf."
_REMEMBERED: Final = 1_000
"""Token exchanges remembered, so one sent by several clients is made once."""


class SignIn(Protocol):
    """Where a person's token is exchanged and kept (``tools.graph.GraphClient``)."""

    async def sign_in(self, user: str, assertion: str) -> None:
        """Exchange ``assertion`` on behalf of ``user``; raise if Entra refuses."""
        ...


class SingleSignOn:
    """The sign-in invokes and the sign-in card, for one Azure Bot OAuth connection."""

    def __init__(
        self,
        turns: Turns,
        egress: Egress,
        connection: str,
        accounts: SignIn,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        """Args:
        turns: The gateway (who a sender is).
        egress: Sends through the connector.
        connection: The Azure Bot resource's OAuth connection name.
        accounts: Where the token is exchanged on the person's behalf.
        spawn: Runs work after the invoke is answered.
        """
        self.turns = turns
        self.egress = egress
        self.connection = connection
        self.accounts = accounts
        self._spawn = spawn
        self._exchanged: OrderedDict[str, None] = OrderedDict()

    def principal(self, activity: Activity) -> str | None:
        """The known principal who sent ``activity``, or None."""
        identity = identity_of(tenant_of(activity) or "", activity)
        sender = self.turns.sender(CHANNEL, identity) if identity else None
        return sender.principal if sender is not None else None

    async def exchange(self, ctx: TurnContext) -> InvokeResponse:
        """``signin/tokenExchange``: exchange the person's token; 412 and the card if not."""
        activity = ctx.activity
        value = activity.value if isinstance(activity.value, dict) else {}
        exchange_id = str(value.get("id") or "")
        body: dict[str, Any] = {"id": exchange_id, "connectionName": self.connection}
        principal = self.principal(activity)
        token = value.get("token")
        if value.get("connectionName") != self.connection or not isinstance(token, str):
            return _failed(body, "not a token exchange for this connection")
        if principal is None:
            return _failed(body, "the sender is not a known principal")
        if exchange_id and exchange_id in self._exchanged:
            return InvokeResponse(status=200, body=body)
        reference = _reference(activity)
        if not await self._sign_in(principal, token):
            self._spawn(self._offer(reference, principal))
            return _failed(body, "the token could not be exchanged")
        if exchange_id:
            self._exchanged[exchange_id] = None
            while len(self._exchanged) > _REMEMBERED:
                self._exchanged.popitem(last=False)
        self._spawn(self.egress.say(reference, [message(SIGNED_IN)]))
        return InvokeResponse(status=200, body=body)

    async def verify(self, ctx: TurnContext) -> InvokeResponse:
        """``signin/verifyState``: the sign-in button's code, redeemed at the token service."""
        activity = ctx.activity
        value = activity.value if isinstance(activity.value, dict) else {}
        principal = self.principal(activity)
        code = value.get("state")
        if principal is None or not isinstance(code, str) or not activity.from_property:
            return InvokeResponse(status=200)
        client = _token_client(ctx)
        token = None
        if client is not None:
            try:
                found = await client.user_token.get_token(
                    activity.from_property.id, self.connection, activity.channel_id, code
                )
                token = found.token
            except Exception as exc:
                log.info("token service refused the code", extra={"error": type(exc).__name__})
        reference = _reference(activity)
        if token and await self._sign_in(principal, token):
            self._spawn(self.egress.say(reference, [message(SIGNED_IN)]))
        else:
            self._spawn(self._offer(reference, principal))
        return InvokeResponse(status=200)

    def offer(self, activity: Activity, principal: str) -> None:
        """``/signin``: send the sign-in card (or sign in at once) after the acknowledgement."""
        self._spawn(self._offer(_reference(activity), principal))

    async def _offer(self, reference: Any, principal: str) -> None:
        async def send(ctx: TurnContext) -> None:
            client = _token_client(ctx)
            if client is None:
                return
            found = await client.get_token_or_sign_in_resource(self.connection, ctx.activity)
            held = found.token_response.token if found.token_response else None
            if held and await self._sign_in(principal, held):
                await self.egress.send(ctx, message(SIGNED_IN))
                return
            resource = found.sign_in_resource
            if resource is None or not resource.sign_in_link:
                await self.egress.send(ctx, message("Sign-in is not available right now."))
                return
            fields: dict[str, Any] = {
                "text": "Sign in to goodbot so it can use your calendar on your behalf.",
                "connection_name": self.connection,
                "buttons": [
                    CardAction(
                        type=ActionTypes.signin, title="Sign in", value=resource.sign_in_link
                    )
                ],
            }
            # The card's model refuses an explicit None for the resources the service left out.
            if resource.token_exchange_resource is not None:
                fields["token_exchange_resource"] = resource.token_exchange_resource
            if resource.token_post_resource is not None:
                fields["token_post_resource"] = resource.token_post_resource
            card = OAuthCard(**fields)
            activity = Activity(
                type=ActivityTypes.message, attachments=[CardFactory.oauth_card(card)]
            )
            await self.egress.send(ctx, activity)

        try:
            await self.egress.converse(reference, send)
        except Exception:
            log.exception("the Teams sign-in card was not sent", extra={"principal": principal})

    async def _sign_in(self, principal: str, token: str) -> bool:
        try:
            await self.accounts.sign_in(principal, token)
        except Exception as exc:
            # Entra's refusal (an expired token, consent missing): the person signs in again.
            log.info(
                "single sign-on refused",
                extra={"principal": principal, "error": type(exc).__name__},
            )
            return False
        log.info("signed in through Teams", extra={"principal": principal})
        return True


def _token_client(ctx: TurnContext) -> UserTokenClient | None:
    """The turn's client for the Bot Framework token service, which the adapter opened."""
    client = ctx.turn_state.get(ChannelAdapter.USER_TOKEN_CLIENT_KEY)
    return client if isinstance(client, UserTokenClient) else None


def _failed(body: dict[str, Any], detail: str) -> InvokeResponse:
    """412: Teams then shows the sign-in card's button instead of signing in silently."""
    return InvokeResponse(status=412, body={**body, "failureDetail": detail})


def _reference(activity: Activity) -> Any:
    reference = activity.get_conversation_reference()
    reference.activity_id = None
    return reference
