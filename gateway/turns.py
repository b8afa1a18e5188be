"""The turn pipeline: from a verified channel message to a stored, audited reply (gateway).

``admit``: the channel must be open, the sender a known principal, the message within the size
limit and the sender within the rate limit; each refusal is audited (metadata only) and
nothing else is stored. Then the text is redacted and stored durably (de-duplicated by the
channel's event id) before anything acts on it. ``run``: turns of one conversation run in
order, turns of different conversations concurrently; the agent loop answers; the reply is
stored and the message marked done in one transaction. A crash leaves the message
``accepted`` or ``processing``, and ``recover`` answers it at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from opentelemetry import trace
from sqlalchemy.exc import SQLAlchemyError

from agent.commands import decide_confirmation, describe_decision
from agent.loop import AgentLoop
from agent.route import AssistantText, Entry, UserText
from agent.turn import Emit, Turn, TurnResult, confirmation_event
from channels.base import (
    Admission,
    DecisionReport,
    InboundMessage,
    RefusedError,
    Sender,
    TurnReport,
)
from gateway.metrics import Metrics
from gateway.observability import new_request_id
from policy.engine import Decision, Policy, PrincipalRef
from policy.guard import PolicyGuard
from policy.limits import FailureLimiter, RateLimiter, SharedRate, check_size, rate_decision
from policy.links import guard_links
from policy.loader import PolicySource
from policy.model import CHANNELS, Channel
from policy.redact import redact
from sessions.results import Confirmation
from sessions.store import SessionStore
from tools.controlplane import ControlPlaneClient
from tools.executor import ToolCall, ToolOutcome
from tools.graph import GraphClient
from tools.registry import ToolContext, ToolSpec

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("goodbot.gateway")
"""Spans through the OpenTelemetry API: no-ops unless the process configures an SDK
(``opentelemetry-instrument goodbot serve`` with an exporter), then a turn is a span, each
tool call a child span, and the control-plane call carries ``traceparent``."""

STORE_DOWN = "goodbot cannot write to its database right now; try again in a minute."


@dataclass
class _Lane:
    lock: asyncio.Lock
    users: int = 0


class TurnService:
    """Implements ``channels.base.Turns`` over the policy, the agent loop and the store."""

    def __init__(
        self,
        *,
        policy: PolicySource,
        store: SessionStore,
        loop: AgentLoop,
        cp: ControlPlaneClient,
        metrics: Metrics,
        notifications: Any = None,
        clock: Callable[[], float] = time.monotonic,
        graph: GraphClient | None = None,
        shared_rate: SharedRate | None = None,
        link_hosts: tuple[str, ...] = (),
        concurrency: int = 16,
    ) -> None:
        """Args:
        policy: The policy file in force (reloaded by the app's watcher).
        store: Messages, confirmations and the audit chain.
        loop: The agent loop (route and executor).
        cp: The control-plane client the tools use.
        metrics: Where counters go.
        notifications: The notification outbox (``gateway.notifications``), if any.
        clock: Monotonic seconds, for the rate limiter (tests pass a fake).
        graph: The Microsoft Graph client the calendar tools use, when configured.
        shared_rate: A rate limiter every replica shares (``sessions.ratelimit`` on
            PostgreSQL): ``take(key, per_minute)`` is None or the seconds to wait. Without
            one the limit is this process's own.
        link_hosts: Hosts a model-written reply may link to (``policy.links``).
        concurrency: Turns run at once; the others wait (admission never does).
        """
        self.link_hosts = link_hosts
        self.sign_in_failures = FailureLimiter()
        self.graph = graph
        self.policy = policy
        self.store = store
        self.loop = loop
        self.cp = cp
        self.metrics = metrics
        self.notifications = notifications
        self.clock = clock
        self.limiter = RateLimiter()
        self.shared_rate = shared_rate
        self._lanes: dict[str, _Lane] = {}
        self._running = asyncio.Semaphore(concurrency)

    # Who is speaking.

    def sender(self, channel: str, identity: str) -> Sender | None:
        """The principal owning ``identity`` on ``channel``, or None."""
        if channel not in CHANNELS:
            return None
        ref = self.policy.current.resolve(channel, identity)
        return None if ref is None else Sender(ref.name, ref.roles)

    def sign_in_wait(self, channel: str, source: str) -> int:
        """Seconds ``source`` must wait after too many failed sign-ins on ``channel`` (0: none)."""
        wait = self.sign_in_failures.wait(f"{channel}:{source}", self.clock())
        return math.ceil(wait) if wait else 0

    async def sign_in_failed(
        self, channel: str, source: str, reason: str, *, block: bool = True
    ) -> None:
        """Count a failed sign-in from ``source``; audit the first of a window and a block.

        Not every attempt is audited, so an unauthenticated caller cannot fill the audit chain:
        at most two records per source and window (``auth.refused``, ``auth.blocked``).
        """
        key = f"{channel}:{source}"
        first, blocked = self.sign_in_failures.fail(key, self.clock())
        self.metrics.messages.labels(channel, "refused").inc()
        data: dict[str, Any] = {"source": source[:100], "reason": reason}
        if first:
            await self.store.audit("auth.refused", None, channel, None, data)
        if blocked and block:
            limiter = self.sign_in_failures
            data |= {"failures": limiter.max_failures, "blocked_seconds": limiter.block}
            await self.store.audit("auth.blocked", None, channel, None, data)

    def whoami(self, sender: Sender, channel: str) -> dict[str, Any]:
        """Principal, roles, channel and the tools the sender may use there."""
        policy = self.policy.current
        ref = policy.principal(sender.principal)
        tools = [] if ref is None else [s.name for s in self._offered(policy, ref, channel)]
        return {
            "principal": sender.principal,
            "roles": list(sender.roles),
            "channel": channel,
            "control_plane_principal": ref.control_plane_principal if ref else None,
            "tools": tools,
        }

    # Admission.

    async def admit(self, message: InboundMessage) -> Admission:
        """Check and store a message; raise ``RefusedError`` with nothing but an audit stored.

        A store that cannot write (disk full, a dropped connection, a lock held too long) is
        a 503 asking to try again: the message was not taken, so nothing is lost.
        """
        try:
            return await self._admit(message)
        except SQLAlchemyError:
            log.exception("could not store a message", extra={"channel": message.channel})
            self.metrics.messages.labels(message.channel, "unavailable").inc()
            raise RefusedError(
                503, "unavailable", STORE_DOWN + " Your message was not taken.", retry_after=30
            ) from None

    async def _admit(self, message: InboundMessage) -> Admission:
        policy = self.policy.current
        channel = message.channel
        if channel not in CHANNELS:
            raise RefusedError(400, "bad_channel", f"unknown channel {channel!r}")
        chan = channel
        ref = policy.resolve(chan, message.identity)
        meta = {
            "event_id": message.event_id[:200],
            "bytes": len(message.text.encode()),
            "request_id": new_request_id(),
        }
        if ref is None:
            await self._refuse(None, channel, "default:unknown-sender", "unknown sender", meta)
            raise RefusedError(403, "unknown_sender", "the sender is not a known principal")
        opened = policy.channel_open(chan)
        if not opened.allowed:
            await self._refuse(ref.name, channel, opened.rule, opened.reason, meta)
            raise RefusedError(403, "channel_closed", opened.reason)
        size = check_size(message.text, policy.max_message_bytes(chan))
        if not size.allowed:
            await self._refuse(ref.name, channel, size.rule, size.reason, meta)
            raise RefusedError(413, "too_large", size.reason)
        rate = await self._take_rate(ref.name, policy.rate_per_minute(ref.name))
        if not rate.allowed:
            await self._refuse(ref.name, channel, rate.rule, rate.reason, meta)
            wait = int(rate.reason.rsplit(" in ", 1)[-1].split()[0]) if " in " in rate.reason else 1
            raise RefusedError(429, "rate_limited", rate.reason, retry_after=wait)
        masked = redact(message.text)
        admitted = await self.store.admit(
            channel,
            message.event_id,
            message.conversation_key,
            ref.name,
            masked.text,
            message.channel_message_id,
            audit={
                **meta,
                "text": masked.text,
                "redacted": list(masked.kinds),
                "policy_revision": policy.revision,
            },
        )
        sender = Sender(ref.name, ref.roles)
        if not admitted.new:
            self.metrics.messages.labels(channel, "duplicate").inc()
            return Admission(message, sender, admitted.message_id, admitted.conversation_id, True)
        self.metrics.messages.labels(channel, "accepted").inc()
        waiting: tuple[dict[str, Any], ...] = ()
        if self.notifications is not None:
            waiting = tuple(await self.notifications.take(ref.name, channel))
        return Admission(
            message, sender, admitted.message_id, admitted.conversation_id, False, waiting
        )

    async def _take_rate(self, principal: str, per_minute: int) -> Decision:
        """One message from the principal's rate: across replicas when shared."""
        if self.shared_rate is None:
            return self.limiter.take(principal, per_minute, self.clock())
        wait = await self.shared_rate.take(f"message:{principal}", per_minute)
        return rate_decision(per_minute, wait)

    async def refuse(
        self, message: InboundMessage, rule: str, reason: str, *, verified: bool = False
    ) -> None:
        """Audit a delivery the channel itself refused before admission (metadata only).

        For checks only the channel can make (the email channel's sender authentication and
        loop brakes); recorded like the gateway's own refusals. The identity is named as
        claimed; it is resolved to a principal only when the channel ``verified`` it.
        """
        ref = None
        if verified and message.channel in CHANNELS:
            ref = self.policy.current.resolve(message.channel, message.identity)
        meta = {
            "event_id": message.event_id[:200],
            "bytes": len(message.text.encode()),
            "claimed_identity": message.identity[:320],
        }
        await self._refuse(ref.name if ref else None, message.channel, rule, reason, meta)

    async def _refuse(
        self, principal: str | None, channel: str, rule: str, reason: str, meta: dict[str, Any]
    ) -> None:
        self.metrics.messages.labels(channel, "refused").inc()
        self.metrics.decisions.labels("denied").inc()
        await self.store.audit(
            "message.refused", principal, channel, None, {**meta, "rule": rule, "reason": reason}
        )

    # Turns.

    async def run(self, admission: Admission, emit: Emit) -> TurnReport:
        """Run the admitted message's turn in its conversation's order; store the reply."""
        if admission.duplicate:
            return await self._replay(admission)
        lane = self._lanes.setdefault(admission.conversation_id, _Lane(asyncio.Lock()))
        lane.users += 1
        self.metrics.turns_in_flight.inc()
        started = time.perf_counter()
        span = _TRACER.start_as_current_span(
            "goodbot.turn",
            attributes={
                "goodbot.channel": admission.message.channel,
                "goodbot.principal": admission.sender.principal,
                "goodbot.conversation_id": admission.conversation_id,
                "goodbot.correlation_id": new_request_id(),
            },
        )
        try:
            with span:
                async with lane.lock, self._running:
                    return await self._turn(admission, emit)
        except SQLAlchemyError:
            # The message is stored and still open: it is answered at the next start
            # (``recover``), or by the channel's retry.
            log.exception("could not store a turn", extra={"message_id": admission.message_id})
            raise RefusedError(
                503, "unavailable", STORE_DOWN + " Your message is kept and will be answered."
            ) from None
        finally:
            lane.users -= 1
            if lane.users == 0:
                self._lanes.pop(admission.conversation_id, None)
            self.metrics.turns_in_flight.dec()
            self.metrics.turn_seconds.labels(admission.message.channel).observe(
                time.perf_counter() - started
            )

    async def _turn(self, admission: Admission, emit: Emit) -> TurnReport:
        msg, sender = admission.message, admission.sender
        policy = self.policy.current
        ref = policy.principal(sender.principal)
        request_id = new_request_id()
        # No separate "processing" mark: an unfinished message is re-run after a crash either
        # way, and the mark would cost a write transaction on every turn.
        if ref is None:  # removed from the policy since admission
            return await self._finish(admission, TurnResult("You are no longer a known principal."))
        chan = cast(Channel, msg.channel)  # admitted, so one of CHANNELS
        entries: list[Entry] = []
        if getattr(self.loop.route, "uses_history", True):
            window = await self.store.history(admission.conversation_id, self.loop.history + 1)
            # Only the person's own messages and the replies to them: in a shared thread,
            # someone else's message is not this person's request (it could carry an
            # instruction), and a reply to someone else may hold what only they may read.
            entries = [
                UserText(m.text) if m.direction == "in" else AssistantText(m.text)
                for m in window
                if m.id != admission.message_id and m.principal_id == ref.name
            ]
        text = redact(msg.text).text
        ctx = self._context(policy, ref, chan, admission.conversation_id, request_id, audit_log=[])
        turn = Turn(text, entries, ctx, self._offered(policy, ref, chan), ref.roles)
        try:
            result = await self.loop.run(turn, emit)
        except Exception:
            log.exception("turn failed", extra={"request_id": request_id})
            await self.store.mark_message(admission.message_id, "failed", "internal error")
            for kind, data in ctx.audit_log or ():
                await self.store.audit(kind, ref.name, msg.channel, admission.conversation_id, data)
            await self.store.audit(
                "turn.failed",
                ref.name,
                msg.channel,
                admission.conversation_id,
                {"message_id": admission.message_id, "request_id": request_id},
            )
            raise RefusedError(
                500, "internal", f"Something went wrong on our side (request id {request_id})."
            ) from None
        self._observe(result)
        return await self._finish(admission, result, request_id, ctx.audit_log or ())

    async def _finish(
        self,
        admission: Admission,
        result: TurnResult,
        request_id: str = "",
        tool_audit: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> TurnReport:
        reply = redact(result.reply).text
        removed: tuple[str, ...] = ()
        if result.route not in ("rules", "command"):  # the model wrote it
            guarded = guard_links(reply, self.link_hosts)
            reply, removed = guarded.text, guarded.removed
        calls = [
            {
                "call_id": o.call_id,
                "name": o.name,
                "arguments": o.arguments,
                "status": o.status,
                "text": o.text,
            }
            for o in result.outcomes
        ]
        confirmation = (
            confirmation_event(result.confirmation) if result.confirmation is not None else None
        )
        await self.store.record_reply(
            admission.conversation_id,
            reply,
            in_reply_to=admission.message_id,
            principal_id=admission.sender.principal,
            channel=admission.message.channel,
            audit_before=tool_audit,
            audit={
                "message_id": admission.message_id,
                "request_id": request_id,
                "route": result.route,
                "steps": result.steps,
                "tools": [{"name": c["name"], "status": c["status"]} for c in calls],
                "confirmation_id": result.confirmation.id if result.confirmation else None,
                "text": reply,
                "links_removed": list(removed),
            },
        )
        return TurnReport(
            reply, calls, confirmation, admission.message_id, admission.conversation_id
        )

    async def _replay(self, admission: Admission) -> TurnReport:
        """A repeated delivery: the first delivery's reply, if it has one yet."""
        history = await self.store.history(admission.conversation_id, 50)
        later = [m for m in history if m.direction == "out" and m.id > admission.message_id]
        reply = later[0].text if later else "This message was received before and is in progress."
        return TurnReport(reply, [], None, admission.message_id, admission.conversation_id)

    # Confirmations.

    async def decide(
        self,
        channel: str,
        identity: str,
        confirmation_id: str,
        decision: Literal["confirm", "deny"],
        arguments_hash: str | None = None,
    ) -> DecisionReport:
        """Confirm or deny for the sender; a confirmed one runs once, as its principal."""
        policy = self.policy.current
        if channel not in CHANNELS:
            raise RefusedError(400, "bad_channel", f"unknown channel {channel!r}")
        chan = channel
        ref = policy.resolve(chan, identity)
        if ref is None:
            raise RefusedError(401, "unauthorized", "the sender is not a known principal")
        found = await self.store.confirmation(confirmation_id)
        conversation = found.conversation_id if found is not None else ""
        ctx = self._context(policy, ref, chan, conversation, new_request_id())
        decided, executed = await decide_confirmation(
            self.loop.executor, ctx, confirmation_id, decision, arguments_hash
        )
        self.metrics.confirmations.labels(decided.outcome).inc()
        current = await self.store.confirmation(confirmation_id) if decided.confirmation else None
        if current is not None and current.principal_id != ref.name:
            current = None
        reply = describe_decision(decided, executed)
        if decided.ok and found is not None:
            await self.store.record_reply(
                found.conversation_id, redact(reply).text, principal_id=ref.name
            )
        if executed is not None:
            self.metrics.confirmations.labels(current.state if current else "failed").inc()
        return DecisionReport(
            decided.outcome,
            decided.reason,
            confirmation_event(current) if current is not None else None,
            None
            if executed is None
            else {"status": executed.status, "text": executed.text, "data": executed.data},
            reply,
        )

    async def pending_confirmations(self, sender: Sender) -> list[dict[str, Any]]:
        """The sender's confirmations waiting for a decision."""
        return [confirmation_event(c) for c in await self.store.pending_for(sender.principal)]

    async def take_notifications(self, sender: Sender, channel: str) -> list[dict[str, Any]]:
        """Notifications waiting for the sender on ``channel``, marked delivered."""
        if self.notifications is None:
            return []
        return list(await self.notifications.take(sender.principal, channel))

    # Tools called directly (MCP): the same policy and executor, no route.

    def offered_tools(self, channel: str, principal: str) -> list[ToolSpec]:
        """The tools ``principal`` may use on ``channel`` under the policy in force."""
        policy = self.policy.current
        ref = policy.principal(principal)
        return [] if ref is None else self._offered(policy, ref, channel)

    async def call_tool(
        self,
        channel: str,
        principal: str,
        conversation_key: str,
        name: str,
        arguments: dict[str, Any],
    ) -> ToolOutcome:
        """Run one tool call for ``principal`` on ``channel``, as a route's call would run.

        The executor checks the policy before and after and audits the call with the channel;
        a mutating tool only proposes, as a pending confirmation in the conversation
        ``conversation_key`` (opened if new), decided later through ``decide``.
        """
        policy = self.policy.current
        call = ToolCall("call_" + uuid.uuid4().hex[:16], name, arguments)
        ref = policy.principal(principal)
        if ref is None or channel not in CHANNELS:
            refused = Decision(False, "not a known principal on this channel", "default:unknown")
        else:
            refused = policy.channel_open(channel)
            if refused.allowed:  # a call counts against the principal's message rate
                per_minute = policy.rate_per_minute(ref.name)
                refused = await self._take_rate(ref.name, per_minute)
        if ref is None or not refused.allowed:
            await self._refuse(
                principal, channel, refused.rule, refused.reason, {"tool": name[:100]}
            )
            text = f"Not allowed: {refused.reason} ({refused.rule})."
            return ToolOutcome(call.id, name, {}, "denied", text, rule=refused.rule)
        chan = cast(Channel, channel)
        conversation = await self.store.open_conversation(chan, conversation_key, ref.name)
        ctx = self.context_for(ref.name, chan, conversation)
        assert ctx is not None
        outcome = await self.loop.executor.call(ctx, call)
        self.metrics.tool_seconds.labels(outcome.name, outcome.status).observe(outcome.seconds)
        self.metrics.decisions.labels("denied" if outcome.status == "denied" else "allowed").inc()
        if outcome.confirmation is not None:
            self.metrics.confirmations.labels(outcome.confirmation.state).inc()
        return outcome

    def context_for(
        self, principal: str, channel: Channel, conversation_id: str
    ) -> ToolContext | None:
        """A ``ToolContext`` for ``principal`` on ``channel`` in a conversation, or None when
        the principal is not in the policy; the executor audits its calls at once."""
        policy = self.policy.current
        ref = policy.principal(principal)
        if ref is None:
            return None
        return self._context(policy, ref, channel, conversation_id, new_request_id())

    # Recovery after a crash.

    async def recover(self, older_than: float = 0.0) -> tuple[int, int]:
        """Answer messages a crash left unfinished; finish confirmed executions once.

        Args:
            older_than: Only work left this many seconds or longer; with several replicas,
                newer work may be in progress on another one.

        Returns:
            How many messages and confirmations were resumed.
        """
        before = datetime.now(UTC) - timedelta(seconds=older_than) if older_than else None
        resumed = 0
        for confirmation in await self.store.recoverable(before=before):
            await self._resume(confirmation)
            resumed += 1
        answered = 0
        for stored in await self.store.pending_messages(before=before):
            if stored.principal_id is None:
                continue
            sender = Sender(stored.principal_id, ())
            ref = self.policy.current.principal(stored.principal_id)
            if ref is not None:
                sender = Sender(ref.name, ref.roles)
            message = InboundMessage(stored.channel, "", f"recovered:{stored.id}", "", stored.text)
            admission = Admission(message, sender, stored.id, stored.conversation_id, False)

            async def drop(_: dict[str, Any]) -> None:
                return None

            try:
                await self.run(admission, drop)
            except RefusedError:
                continue
            answered += 1
        return answered, resumed

    async def _resume(self, confirmation: Confirmation) -> None:
        policy = self.policy.current
        ref = policy.principal(confirmation.principal_id)
        if ref is None:
            if confirmation.state == "confirmed":
                await self.store.begin_execution(confirmation.id)
            await self.store.finish_execution(
                confirmation.id, error="the principal is no longer in the policy"
            )
            return
        chan = cast(Channel, confirmation.channel)  # stored from an admitted turn
        ctx = self._context(policy, ref, chan, confirmation.conversation_id, new_request_id())
        outcome = await self.loop.executor.execute(ctx, confirmation)
        log.info(
            "resumed a confirmed action after restart",
            extra={"confirmation_id": confirmation.id, "status": outcome.status},
        )

    # Helpers.

    def _context(
        self,
        policy: Policy,
        ref: PrincipalRef,
        channel: Channel,
        conversation: str,
        rid: str,
        audit_log: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> ToolContext:
        return ToolContext(
            principal=ref.name,
            act_as=ref.control_plane_principal,
            channel=channel,
            conversation_id=conversation,
            request_id=rid,
            cp=self.cp,
            guard=PolicyGuard(policy, ref, channel),
            audit_log=audit_log,
            graph=self.graph,
        )

    def _offered(self, policy: Policy, ref: PrincipalRef, channel: str) -> list[Any]:
        if channel not in CHANNELS or not policy.channel_open(channel).allowed:
            return []
        actions = policy.granted_actions(ref, channel)
        return self.loop.executor.registry.offered(actions)

    def _observe(self, result: TurnResult) -> None:
        self.metrics.model_seconds.labels(result.route).observe(result.model_seconds)
        if result.prompt_tokens:
            self.metrics.model_tokens.labels("prompt").inc(result.prompt_tokens)
        if result.completion_tokens:
            self.metrics.model_tokens.labels("completion").inc(result.completion_tokens)
        for outcome in result.outcomes:
            self.metrics.tool_seconds.labels(outcome.name, outcome.status).observe(outcome.seconds)
            self.metrics.decisions.labels(
                "denied" if outcome.status == "denied" else "allowed"
            ).inc()
        if result.confirmation is not None:
            self.metrics.confirmations.labels(result.confirmation.state).inc()
