"""Gateway notifications: control-plane events → the people concerned, on the channels they use.

``poll`` (a background duty of the composition root) reads new control-plane events since the
cursor of each event type it maps, works out who is concerned, stores one notification per
person per channel in the session store's outbox, and moves the cursor in the same
transaction. ``take`` hands a person's waiting notifications to a channel, once: the CLI shows
them before the next turn and in ``goodbot notifications``; later channels call the same
``take`` or deliver proactively.

Events mapped (topic in brackets, also the subscription topic):

- ``approval_requested`` (``approval.requested``): everyone in the policy file whose
  control-plane principal finds the approval in ``GET /approvals/pending`` (so the control
  plane's own CAB rules pick the deciders; the requester and the intent's author never see it);
- ``exception_requested`` (``exception.requested``): likewise, reviewers of a risk exception;
- ``rollout_paused`` (``rollout.paused``): the intent's author and the application's owner
  (for a manual pause, not the person who paused it);
- ``exception_expiring`` (``exception.expiring``): the exception's owner.

The channels a person uses: each enabled channel on which the policy file gives them an
identity, plus those they subscribed to the topic on (``SessionStore.directory``). A
subscriber who is not concerned hears about a pause or an expiring exception only if the
control plane lets them read its subject; approvals go only to those who may decide them.

Reading events needs a control-plane principal scoped to the whole organization with the
``event.read`` permission; the gateway's own credential (``goodbot-gateway``, a viewer in the
demo) has neither, and every call asserts ``X-Act-As``. So the poller acts as ``reader`` when
given, else as the first principal of the policy file whose control-plane principal the
control plane lets read events (probed with an empty read, re-probed when the policy file
changes or the read is refused) — ``ana`` or ``li`` in the demo. Only reads are made as it.

Robustness: every failure of the control plane ends the round (logged, not raised); a cursor
only moves past an event once that event's notifications are stored, so nothing is lost, and
the outbox's dedupe keys make a re-read (or a second replica) harmless. Free text from events
is data: it is put on one line, capped, and stripped of characters that are markup in
Markdown, Slack or HTML before it reaches a notification.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from gateway.metrics import Metrics
from policy.loader import PolicySource
from policy.model import CHANNELS
from sessions.notifications import Cursor, NewNotification
from sessions.store import SessionStore
from tools.controlplane import MAX_PAGES, PAGE_SIZE, ControlPlaneClient, Json
from tools.errors import (
    ConflictError,
    ControlPlaneError,
    ControlPlaneUnavailableError,
    InvalidError,
    NotAllowedError,
    NotFoundError,
)

log = logging.getLogger(__name__)

SOURCE: Final = "controlplane:"
"""Cursor sources are ``controlplane:<event type>``."""
TOPICS: Final = {
    "approval_requested": "approval.requested",
    "exception_requested": "exception.requested",
    "rollout_paused": "rollout.paused",
    "exception_expiring": "exception.expiring",
}
"""Control-plane event type → notification topic, in the order a round reads them."""
LOOKBACK: Final = timedelta(days=30)
"""How far back a first read goes (a CAB request stays open 30 days)."""
OVERLAP: Final = timedelta(minutes=5)
"""Events are read from this long before the cursor's event time and filtered by seq: an
event's time is taken before its seq, so a later seq can carry a slightly earlier time."""
REPROBE_SECONDS: Final = 60.0
"""How long to wait before looking for a reader again after none could read events."""
TEXT_CAP: Final = 200
"""Most characters of one free-text field (a reason, a name) in a notification."""
RINGS: Final = {0: "lab", 1: "canary", 2: "pilot", 3: "department", 4: "global"}
"""The control plane's ring names."""

_ID: Final = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,99}$")
"""Control-plane ids as the client accepts them in a path."""
_SPACE: Final = re.compile(r"\s+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_MARKUP: Final = str.maketrans(
    {"`": "'", "*": "", "[": "(", "]": ")", "<": "(", ">": ")", "|": "/", "\\": "/", "~": "-"}
)
"""Characters that start markup in Markdown, Slack mrkdwn or HTML, as plain ASCII."""


def plain(value: object, limit: int = TEXT_CAP) -> str:
    """Free text as plain text: one line, no control or bidi characters, no markup, capped."""
    text = "" if value is None else str(value)
    # Line breaks and tabs become spaces before control characters go, so words stay apart.
    text = " ".join(_CONTROL.sub("", _SPACE.sub(" ", text)).split()).translate(_MARKUP)
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def percent(value: float) -> str:
    """``0.8833`` → ``88.33%``, ``0.98`` → ``98%``."""
    return f"{value * 100:.2f}".rstrip("0").rstrip(".") + "%"


def gate_text(gate: Mapping[str, Any]) -> str:
    """A failed gate as people read it: ``install_success_rate 88.33% (needs 98%)``."""
    name, measured, threshold = (
        plain(gate.get("name"), 60),
        gate.get("measured"),
        gate.get("threshold"),
    )
    if (
        name.endswith("_rate")
        and isinstance(measured, int | float)
        and isinstance(threshold, int | float)
        and 0 <= measured <= 1
        and 0 <= threshold <= 1
    ):
        return f"{name} {percent(measured)} (needs {percent(threshold)})"
    if measured is None and threshold is None:
        return name
    return f"{name} {plain(measured, 60)} (needs {plain(threshold, 60)})"


def ring_name(ring: object) -> str:
    """``canary`` for ring 1; ``ring 7`` for a ring this gateway does not know."""
    return RINGS.get(ring, f"ring {plain(ring, 10)}") if isinstance(ring, int) else "a ring"


def _principal_name(actor: object) -> str:
    """``ana (via goodbot-gateway)`` → ``ana``."""
    return str(actor or "").split(" (via ", 1)[0]


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(event.get("timestamp")))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _object_id(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"event data has no valid {key}")
    return value


@dataclass
class _Round:
    """What one poll has looked up already (each lookup once per round)."""

    reader: str
    pending: dict[str, dict[str, Json]] = field(default_factory=dict)
    subscribers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    releases: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Message:
    """What to tell the people concerned about one event."""

    topic: str
    dedupe_key: str
    text: str
    data: dict[str, Any]
    concerned: frozenset[str]
    """Gateway principals told on every channel they use."""
    may_subscribe: Callable[[str], Awaitable[bool]] | None = None
    """Whether a subscriber who is not concerned may hear about it (None: nobody else)."""


class Notifications:
    """The notification poller and outbox front for channels (``Gateway.notifications``)."""

    def __init__(
        self,
        store: SessionStore,
        cp: ControlPlaneClient,
        policy: PolicySource,
        metrics: Metrics,
        *,
        reader: str | None = None,
        lookback: timedelta = LOOKBACK,
    ) -> None:
        """Wire the collaborators; nothing is read until ``poll``.

        Args:
            store: The session store whose outbox and cursors are used.
            cp: The control-plane client (the gateway's credential).
            policy: The policy file: who the people are and which channels they use.
            metrics: ``notifications`` counts ``enqueued`` and ``delivered`` per channel.
            reader: The control-plane principal to read events as; None to use the first
                principal of the policy file that may (see the module docstring).
            lookback: How far back the first read of an event type goes.
        """
        self._store = store
        self._cp = cp
        self._policy = policy
        self._metrics = metrics
        self._reader = reader
        self._lookback = lookback
        self._found: tuple[str, str | None, float] | None = None

    async def take(self, principal: str, channel: str) -> list[dict[str, Any]]:
        """The principal's waiting notifications on ``channel``, oldest first, now delivered.

        Returns:
            ``{"id", "text", "created_at" (ISO 8601), "topic"}`` per notification; each is
            returned to one caller only, however many ask at once.
        """
        taken = await self._store.notifications.take(principal, channel)
        if taken:
            self._metrics.notifications.labels(channel, "delivered").inc(len(taken))
        return [
            {
                "id": f"ntf_{n.id}",
                "text": n.text,
                "created_at": n.created_at.isoformat(timespec="seconds"),
                "topic": n.topic,
            }
            for n in taken
        ]

    async def poll(self) -> int:
        """Read new control-plane events and store a notification for each person concerned.

        Returns:
            How many notifications were stored (0 when the control plane does not answer).
        """
        stored = 0
        try:
            reader = await self._find_reader()
            if reader is None:
                return 0
            state = _Round(reader)
            for event_type in TOPICS:
                stored += await self._read(state, event_type)
        except NotAllowedError as exc:
            self._found = None  # the reader lost its access; look for another next time
            log.warning(
                "notification poll refused",
                extra={"reason": exc.message, "request_id": exc.request_id},
            )
        except ControlPlaneError as exc:
            log.warning(
                "notification poll stopped: the control plane failed",
                extra={"error": type(exc).__name__, "reason": exc.message},
            )
        return stored

    # Reading.

    async def _find_reader(self) -> str | None:
        if self._reader is not None:
            return self._reader
        revision = self._policy.current.revision
        if self._found is not None:
            seen, name, at = self._found
            if seen == revision and (name is not None or time.monotonic() - at < REPROBE_SECONDS):
                return name
        found = None
        for key, principal in self._policy.current.source.principals.items():
            candidate = principal.control_plane_principal or key
            try:
                await self._cp.events(candidate, since=datetime.now(UTC), limit=1)
            except ControlPlaneUnavailableError:
                raise
            except ControlPlaneError:
                continue  # no event.read, not organization-wide, or unknown there
            found = candidate
            break
        if found is None:
            log.warning("no principal in the policy file may read control-plane events")
        else:
            log.info("reading control-plane events", extra={"act_as": found})
        self._found = (revision, found, time.monotonic())
        return found

    async def _read(self, state: _Round, event_type: str) -> int:
        """Act on the new events of one type, in seq order, moving its cursor after each."""
        source = SOURCE + event_type
        cursor = await self._store.notifications.cursor(source)
        after = cursor.position if cursor is not None else 0
        if cursor is not None and cursor.event_at is not None:
            since = cursor.event_at - OVERLAP
        else:
            since = datetime.now(UTC) - self._lookback
        events = await self._cp.events(
            state.reader, type=event_type, since=since, limit=PAGE_SIZE * MAX_PAGES
        )
        stored = 0
        for event in sorted(events, key=lambda e: int(e["seq"])):
            seq = int(event["seq"])
            if seq <= after:
                continue
            items = await self._notifications_for(state, event)
            moved = Cursor(source, seq, _event_time(event))
            new = await self._store.notifications.enqueue(items, cursor=moved)
            for note in new:
                self._metrics.notifications.labels(note.channel, "enqueued").inc()
            stored += len(new)
            after = seq
        return stored

    async def _notifications_for(self, state: _Round, event: Json) -> list[NewNotification]:
        """The notifications one event makes; none for an event whose data cannot be used."""
        handlers = {
            "approval_requested": self._approval_requested,
            "exception_requested": self._exception_requested,
            "rollout_paused": self._rollout_paused,
            "exception_expiring": self._exception_expiring,
        }
        where = {"seq": event.get("seq"), "type": event.get("type")}
        try:
            message = await handlers[event["type"]](state, event)
        except (NotFoundError, InvalidError, ConflictError) as exc:
            # Its subject is gone, hidden from the reader, or not one the API takes: asking
            # again would give the same answer, so the event is passed over.
            log.info("event subject not readable", extra={**where, "reason": exc.message})
            return []
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("event skipped", extra={**where, "reason": str(exc)})
            return []
        if message is None:
            return []
        return await self._fan_out(state, message, event)

    async def _fan_out(
        self, state: _Round, message: _Message, event: Json
    ) -> list[NewNotification]:
        policy = self._policy.current
        channels: dict[str, set[str]] = {}
        for name in message.concerned:
            principal = policy.source.principals.get(name)
            if principal is not None:
                channels.setdefault(name, set()).update(i.channel for i in principal.identities)
        if message.topic not in state.subscribers:
            state.subscribers[message.topic] = await self._store.directory.subscribers(
                message.topic
            )
        for name, channel in state.subscribers[message.topic]:
            principal = policy.source.principals.get(name)
            if principal is None:
                continue
            if name not in message.concerned:
                visible = message.may_subscribe is not None and await message.may_subscribe(
                    principal.control_plane_principal or name
                )
                if not visible:
                    continue
            channels.setdefault(name, set()).add(channel)
        data = {"event_seq": event["seq"], "event_type": event["type"], **message.data}
        return [
            NewNotification(name, channel, message.topic, message.text, message.dedupe_key, data)
            for name in sorted(channels)
            for channel in sorted(channels[name])
            if channel in CHANNELS and policy.channel_open(channel).allowed
        ]

    # Events.

    async def _approval_requested(self, state: _Round, event: Json) -> _Message | None:
        approval_id = _object_id(event["data"], "approval_id")
        deciders, item = await self._deciders(state, approval_id)
        if item is None:
            return None  # decided, lapsed, or nobody in the policy file may decide it
        what = plain(item.get("summary", "")).removeprefix("CAB approval to ")
        text = (
            f"CAB approval {approval_id} is waiting for you: {what or 'a release'}. "
            f"Approve with: /approve {approval_id}"
        )
        data = {"approval_id": approval_id, "ring": item.get("ring")}
        return _Message(
            "approval.requested", f"approval:{approval_id}", text, data, frozenset(deciders)
        )

    async def _exception_requested(self, state: _Round, event: Json) -> _Message | None:
        data = event["data"]
        exception_id = _object_id(data, "exception_id")
        reviewers, item = await self._deciders(state, exception_id)
        if item is None:
            return None
        release = await self._release(state, _object_id(data, "version_id"))
        text = (
            f"Risk exception {exception_id} ({plain(data.get('kind'), 40)}) for {release} "
            f"is waiting for your review; owner {plain(data.get('owner'), 100)}, "
            f"until {plain(str(data.get('expires_at', ''))[:10], 10)}."
        )
        return _Message(
            "exception.requested",
            f"exception:{exception_id}",
            text,
            {"exception_id": exception_id},
            frozenset(reviewers),
        )

    async def _rollout_paused(self, state: _Round, event: Json) -> _Message:
        data = event["data"]
        rollout_id = _object_id(data, "rollout_id")
        intent_id = _object_id(data, "intent_id")
        intent = await self._cp.intent(state.reader, intent_id)
        app = await self._cp.app(state.reader, _object_id(data, "application_id"))
        version = await self._release(state, _object_id(data, "version_id"))
        automatic = bool(data.get("automatic"))
        people = {_principal_name(intent.get("requested_by")), str(app.get("owner", ""))}
        if not automatic:
            people.discard(_principal_name(event.get("actor")))
        where = ring_name(data.get("ring"))
        failed = data.get("failed_gates") or []
        if automatic and failed:
            why = "; ".join(gate_text(g) for g in failed[:5] if isinstance(g, Mapping))
            text = f"Rollout of {version} paused in {where}: {why}."
        else:
            who = plain(_principal_name(event.get("actor")), 100)
            reason = plain(data.get("reason"))
            text = f"Rollout of {version} paused in {where} by {who}" + (
                f": {reason}." if reason else "."
            )
        text += f" Details: /rollout {version} ({rollout_id})"

        async def may_read(act_as: str) -> bool:
            return await self._readable(self._cp.intent(act_as, intent_id))

        return _Message(
            "rollout.paused",
            f"rollout_paused:{event['seq']}",
            text,
            {"rollout_id": rollout_id, "intent_id": intent_id, "ring": data.get("ring")},
            frozenset(self._gateway_principals(people)),
            may_read,
        )

    async def _exception_expiring(self, state: _Round, event: Json) -> _Message:
        data = event["data"]
        exception_id = _object_id(data, "exception_id")
        version_id = _object_id(data, "version_id")
        release = await self._release(state, version_id)
        day = plain(str(data.get("expires_at", ""))[:10], 10)
        if event.get("outcome") == "expired":
            text = (
                f"Risk exception {exception_id} for {release} expired on {day}; "
                "the supply-chain gate no longer counts it."
            )
        else:
            text = (
                f"Risk exception {exception_id} for {release} expires on {day}; "
                "renew it or the supply-chain gate will fail."
            )

        async def may_read(act_as: str) -> bool:
            return await self._readable(self._cp.version(act_as, version_id))

        return _Message(
            "exception.expiring",
            f"exception_expiring:{exception_id}",
            text,
            {"exception_id": exception_id, "version_id": version_id},
            frozenset(self._gateway_principals([str(data.get("owner", ""))])),
            may_read,
        )

    # Look-ups.

    async def _deciders(self, state: _Round, item_id: str) -> tuple[list[str], Json | None]:
        """Gateway principals whose pending list holds ``item_id``, and the item."""
        deciders, found = [], None
        for key, principal in self._policy.current.source.principals.items():
            act_as = principal.control_plane_principal or key
            if act_as not in state.pending:
                try:
                    pending = await self._cp.pending_approvals(act_as)
                except (NotAllowedError, NotFoundError):
                    pending = None  # cannot read approvals there: decides nothing
                items = pending.items if pending is not None else ()
                state.pending[act_as] = {str(i.get("id")): i for i in items}
            item = state.pending[act_as].get(item_id)
            if item is not None:
                deciders.append(key)
                found = item
        return deciders, found

    async def _release(self, state: _Round, version_id: str) -> str:
        """``firefox 132.0.0`` for a version id (read once per round)."""
        if version_id not in state.releases:
            doc = await self._cp.version(state.reader, version_id)
            state.releases[version_id] = (plain(doc["application"], 100), plain(doc["version"], 60))
        return " ".join(state.releases[version_id])

    def _gateway_principals(self, names: Iterable[str]) -> list[str]:
        """The policy file's principals whose control-plane principal is one of ``names``."""
        wanted = {n for n in names if n}
        return [
            key
            for key, principal in self._policy.current.source.principals.items()
            if (principal.control_plane_principal or key) in wanted
        ]

    @staticmethod
    async def _readable(read: Awaitable[Json]) -> bool:
        try:
            await read
        except (NotAllowedError, NotFoundError):
            return False
        return True
