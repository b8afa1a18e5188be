"""CLI channel, server side: HTTP with a bearer token bound to a principal (channels).

The protocol (the client is ``channels.terminal``)::

    POST /cli/v1/turns                {"text", "conversation"?, "event_id"?}
         → 400/401/403/413/429 {"error": {"code", "message"}} before anything is stored
         → 200 application/x-ndjson, one event per line as the turn runs:
           accepted, notification*, tool_call, tool_result, confirmation, reply, done | error
    POST /cli/v1/confirmations/{id}   {"decision": "confirm"|"deny", "arguments_hash"?}
         → 200 confirmed/denied, 404 unknown, 403 wrong principal, 409 expired/decided/changed
    GET  /cli/v1/confirmations        my pending confirmations
    GET  /cli/v1/notifications        my notifications, marked delivered
    GET  /cli/v1/whoami               principal, roles, tools

The token's identity is ``sha256:<hex of the token>``, the form the policy file lists, so the
token itself is never stored. Failed sign-ins are counted per client address: after ten in a
minute the address gets 429 on every request, right token or wrong, for five minutes
(``policy.limits.FailureLimiter``); the first failure of a window and the block are audited
(``auth.refused``, ``auth.blocked``). A client that disconnects mid-turn does not cancel it: the
message was accepted, so the turn finishes and its reply is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from channels.base import InboundMessage, RefusedError, Sender, Turns

log = logging.getLogger(__name__)

CHANNEL: Final = "cli"
MAX_BODY_BYTES: Final = 1_048_576
"""Largest request body read at all; the policy's message limit is checked after parsing."""
_CONVERSATION: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EVENT_ID: Final = re.compile(r"^[\x21-\x7e]{1,200}$")
_STATUS: Final = {
    "confirmed": 200,
    "denied": 200,
    "unknown": 404,
    "wrong_principal": 403,
    "expired": 409,
    "already_decided": 409,
    "arguments_changed": 409,
}


def identity_of(token: str) -> str:
    """The policy identity of a CLI token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """The channel's one error shape."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(
        status=status, body=body, content_type="application/json", headers=headers or None
    )


def refused(exc: RefusedError) -> web.Response:
    """A refusal in the channel's error shape, with ``Retry-After`` when it has a wait."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    return error(exc.status, exc.code, exc.message, **headers)


@dataclass
class CliChannel:
    """The CLI channel's routes over a ``Turns`` implementation."""

    turns: Turns

    def routes(self) -> list[web.RouteDef]:
        """The channel's routes, to add to the gateway's application."""
        return [
            web.post("/cli/v1/turns", self.turn),
            web.post("/cli/v1/confirmations/{id}", self.decide),
            web.get("/cli/v1/confirmations", self.confirmations),
            web.get("/cli/v1/notifications", self.notifications),
            web.get("/cli/v1/whoami", self.whoami),
        ]

    async def _sender(self, request: web.Request) -> tuple[str, Sender]:
        source = request.remote or "unknown"
        wait = self.turns.sign_in_wait(CHANNEL, source)
        if wait:
            raise RefusedError(
                429,
                "too_many_failures",
                f"too many failed sign-ins from this address; try again in {wait} s",
                retry_after=wait,
            )
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self.turns.sign_in_failed(CHANNEL, source, "no bearer token")
            raise RefusedError(401, "unauthorized", "a bearer token is required")
        identity = identity_of(token.strip())
        sender = self.turns.sender(CHANNEL, identity)
        if sender is None:
            # Audited once per source and window (and when blocked), so an unauthenticated
            # caller cannot fill the audit chain. Logged without the token.
            log.info("refused an unknown CLI token", extra={"remote": source})
            await self.turns.sign_in_failed(CHANNEL, source, "unknown token")
            raise RefusedError(401, "unauthorized", "the token is not valid")
        return identity, sender

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise RefusedError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise RefusedError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RefusedError(400, "malformed", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RefusedError(400, "malformed", "the body must be a JSON object")
        return body

    async def turn(self, request: web.Request) -> web.StreamResponse:
        """``POST /cli/v1/turns``: admit, then stream the turn as NDJSON."""
        try:
            identity, sender = await self._sender(request)
            body = await self._json(request)
            message = _message(body, identity, sender)
            admission = await self.turns.admit(message)
        except RefusedError as exc:
            return refused(exc)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def emit(event: dict[str, Any]) -> None:
            # A client that went away does not stop the turn; its reply is stored.
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await response.write(orjson.dumps(event) + b"\n")

        await emit(
            {
                "type": "accepted",
                "message_id": admission.message_id,
                "conversation_id": admission.conversation_id,
                "duplicate": admission.duplicate,
            }
        )
        for note in admission.notifications:
            await emit({"type": "notification", **note})
        try:
            report = await self.turns.run(admission, emit)
        except RefusedError as exc:
            await emit({"type": "error", "error": {"code": exc.code, "message": exc.message}})
        else:
            await emit({"type": "reply", "text": report.reply})
            await emit({"type": "done", "result": report.as_json()})
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def decide(self, request: web.Request) -> web.Response:
        """``POST /cli/v1/confirmations/{id}``: confirm or deny, and run it once if confirmed."""
        try:
            identity, _ = await self._sender(request)
            body = await self._json(request)
            decision = body.get("decision")
            if decision not in ("confirm", "deny"):
                raise RefusedError(400, "malformed", "decision must be 'confirm' or 'deny'")
            hashed = body.get("arguments_hash")
            if hashed is not None and not isinstance(hashed, str):
                raise RefusedError(400, "malformed", "arguments_hash must be a string")
            unknown = set(body) - {"decision", "arguments_hash"}
            if unknown:
                raise RefusedError(400, "malformed", f"unknown field {sorted(unknown)[0]!r}")
            report = await self.turns.decide(
                CHANNEL, identity, request.match_info["id"], decision, hashed
            )
        except RefusedError as exc:
            return refused(exc)
        payload = {
            "outcome": report.outcome,
            "reason": report.reason,
            "confirmation": report.confirmation,
            "result": report.result,
            "reply": report.reply,
        }
        return web.json_response(payload, status=_STATUS[report.outcome], dumps=_dumps)

    async def confirmations(self, request: web.Request) -> web.Response:
        """``GET /cli/v1/confirmations``: my pending confirmations."""
        try:
            _, sender = await self._sender(request)
        except RefusedError as exc:
            return refused(exc)
        items = await self.turns.pending_confirmations(sender)
        return web.json_response({"items": items}, dumps=_dumps)

    async def notifications(self, request: web.Request) -> web.Response:
        """``GET /cli/v1/notifications``: my notifications, marked delivered."""
        try:
            _, sender = await self._sender(request)
        except RefusedError as exc:
            return refused(exc)
        items = await self.turns.take_notifications(sender, CHANNEL)
        return web.json_response({"items": items}, dumps=_dumps)

    async def whoami(self, request: web.Request) -> web.Response:
        """``GET /cli/v1/whoami``."""
        try:
            _, sender = await self._sender(request)
        except RefusedError as exc:
            return refused(exc)
        return web.json_response(self.turns.whoami(sender, CHANNEL), dumps=_dumps)


def _message(body: dict[str, Any], identity: str, sender: Sender) -> InboundMessage:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RefusedError(400, "malformed", "text must be a non-empty string")
    if "\x00" in text:
        raise RefusedError(400, "malformed", "text must not contain NUL characters")
    conversation = body.get("conversation", "default")
    if not isinstance(conversation, str) or not _CONVERSATION.match(conversation):
        raise RefusedError(400, "malformed", "conversation must match [A-Za-z0-9_.-]{1,64}")
    event_id = body.get("event_id") or uuid.uuid4().hex
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise RefusedError(400, "malformed", "event_id must be 1 to 200 printable characters")
    unknown = set(body) - {"text", "conversation", "event_id"}
    if unknown:
        raise RefusedError(400, "malformed", f"unknown field {sorted(unknown)[0]!r}")
    return InboundMessage(
        channel=CHANNEL,
        identity=identity,
        # Scoped to the sender, so one principal cannot collide with another's event ids.
        event_id=f"{sender.principal}:{event_id}",
        conversation_key=f"cli:{sender.principal}:{conversation}",
        text=text,
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
