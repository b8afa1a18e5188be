"""Control plane API: the audit trail (list, verify, export) and webhook subscriptions.

Every route reads or changes the caller's own tenant only; the tenant comes from the token,
never from the request.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, field_validator
from sqlalchemy import Row, select, update
from yarl import URL

from controlplane.access import require, tenant_wide
from controlplane.egress import literal_refusal
from controlplane.errors import BadRequestError, NotFoundError, UnprocessableError
from controlplane.events import (
    ANY_TYPE,
    EVENT_TYPES,
    append_event,
    chain_head,
    event_document,
    read_events,
    verify_chain,
)
from controlplane.http import REQUEST_ID, Api, ApiRequest, Page, Strict, decode_cursor, paginate
from controlplane.models import Event, WebhookDelivery, WebhookSubscription, new_id
from controlplane.signing import canonical
from controlplane.webhooks import new_secret

api = Api()

MAX_SEQ: Final = 2**63 - 1
"""Largest seq a query may name (PostgreSQL BIGINT)."""
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")
Id = Field(default=None, pattern=_ID.pattern)


class EventOut(BaseModel):
    """One event exactly as its hash covers it, so a client can recompute the chain."""

    tenant_id: str
    seq: int
    """Position in the tenant's chain, from 1 without gaps."""
    type: str
    """One of the event types (seed 001 §8 plus administrative ones)."""
    scope_id: str | None
    device_id: str | None
    manager: str | None
    task_id: str | None
    action: str
    """Dotted lowercase action, such as ``scope.create``."""
    policy_version: str | None
    outcome: str
    timestamp: str = Field(json_schema_extra={"format": "date-time"})
    """UTC, with microseconds, in the exact form the hash covers."""
    actor: str
    """The acting principal (``name (via gateway)`` when a gateway acted for them)."""
    correlation_id: str
    """Request id of the request that caused the event."""
    data: dict[str, Any]
    prev_hash: str
    """Hash of the previous event (64 zeros for the first)."""
    hash: str
    """sha256 hex over ``prev_hash``, a newline and the RFC 8785 JSON of the fields above."""


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class EventQuery(Page):
    type: str | None = Field(default=None, pattern=r"^[a-z_]{1,60}$")
    """Only events of this type."""
    device_id: str | None = Id
    """Only events about this device."""
    scope_id: str | None = Id
    """Only events about this scope."""
    since: AwareDatetime | None = None
    """Only events at or after this time (with a zone)."""

    @field_validator("since")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        try:
            return None if value is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError("since is out of range") from None


class ChainCheck(BaseModel):
    """The result of walking the tenant's chain."""

    ok: bool
    """True when every event links to its predecessor and the head matches the newest event."""
    checked: int
    """Events examined before the walk ended."""
    head_seq: int
    """Sequence number the chain head records."""
    first_bad_seq: int | None
    """The first event found wrong or missing."""
    problem: str | None
    """What is wrong there."""


class ExportQuery(Strict):
    since_seq: int | None = Field(default=None, ge=0, le=MAX_SEQ)
    """Only events after this seq (the last one a previous export ended with)."""


def _event_out(event: Event | Row[Any]) -> EventOut:
    return EventOut.model_validate(event_document(event))


@api.route(
    "GET",
    "/events",
    summary="List the tenant's audit events, oldest first",
    permission="event.read",
    tag="events",
    query=EventQuery,
    response=EventList,
)
async def list_events(req: ApiRequest) -> EventList:
    require(tenant_wide(req.me))
    q = req.query
    assert isinstance(q, EventQuery)
    after = _seq_cursor(q.cursor)
    stmt = select(Event).where(Event.tenant_id == req.me.tenant_id)
    if q.type is not None:
        stmt = stmt.where(Event.type == q.type)
    if q.device_id is not None:
        stmt = stmt.where(Event.device_id == q.device_id)
    if q.scope_id is not None:
        stmt = stmt.where(Event.scope_id == q.scope_id)
    if q.since is not None:
        stmt = stmt.where(Event.timestamp >= q.since)
    if after is not None:
        stmt = stmt.where(Event.seq > after)
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(Event.seq).limit(q.limit + 1))).scalars()
        page, cursor = paginate(rows, q.limit, lambda e: str(e.seq))
    return EventList(items=[_event_out(e) for e in page], next_cursor=cursor)


def _seq_cursor(cursor: str | None) -> int | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_SEQ:
        raise BadRequestError("cursor is not one this service issued", field="cursor")
    return int(value)


@api.route(
    "GET",
    "/events/verify",
    summary="Walk the tenant's hash chain and report the first edited, moved or missing event",
    permission="event.verify",
    tag="events",
    response=ChainCheck,
)
async def verify_events(req: ApiRequest) -> ChainCheck:
    require(tenant_wide(req.me))
    async with req.state.sessions() as session:
        report = await verify_chain(session, req.me.tenant_id)
    return ChainCheck(
        ok=report.ok,
        checked=report.checked,
        head_seq=report.head_seq,
        first_bad_seq=report.first_bad_seq,
        problem=report.problem,
    )


@api.route(
    "GET",
    "/events/export",
    summary="Export the tenant's chain as JSON lines, one canonical event per line",
    permission="event.export",
    tag="events",
    query=ExportQuery,
    content_type="application/x-ndjson",
)
async def export_events(req: ApiRequest) -> web.StreamResponse:
    require(tenant_wide(req.me))
    q = req.query
    assert isinstance(q, ExportQuery)
    tenant_id = req.me.tenant_id
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="events-{tenant_id}.ndjson"',
            # Set here: the errors middleware adds it after the handler, too late for a
            # response whose headers are already sent.
            "X-Request-Id": req.request[REQUEST_ID],
        }
    )
    async with req.state.sessions() as session:
        # Up to the head as it is now: a consistent prefix of the chain, however long the
        # export takes while others append.
        head_seq, _ = await chain_head(session, tenant_id)
        response.headers["X-Goodbot-Head-Seq"] = str(head_seq)
        await response.prepare(req.request)
        async for rows in read_events(session, tenant_id, after=q.since_seq, upto=head_seq):
            await response.write(await asyncio.to_thread(_lines, rows))
    await response.write_eof()
    return response


def _lines(rows: list[Row[Any]]) -> bytes:
    return b"".join(canonical(event_document(row)) + b"\n" for row in rows)


Subscribable = Literal[
    "policy_applied",
    "policy_rejected",
    "compliance_evaluated",
    "drift_detected",
    "remediation_started",
    "remediation_completed",
    "remediation_failed",
    "enforcement_decided",
    "device_registered",
    "inventory_reported",
    "access_changed",
    "scope_changed",
    "webhook_changed",
    "*",
    "catalog_changed",
    "artifact_registered",
    "risk_assessed",
    "exception_requested",
    "exception_decided",
    "exception_expiring",
    "evidence_stored",
    "intent_created",
    "approval_requested",
    "approval_decided",
    "gate_evaluated",
    "rollout_promoted",
    "rollout_paused",
    "rollout_resumed",
    "rollout_rolled_back",
    "incident_changed",
    "connector_task",
]
assert set(Subscribable.__args__) == {*EVENT_TYPES, ANY_TYPE}  # type: ignore[attr-defined]


class WebhookCreate(Strict):
    url: str = Field(min_length=1, max_length=2000)
    """Where to POST events: an absolute http or https URL."""
    event_types: list[Subscribable] = Field(min_length=1, max_length=len(EVENT_TYPES) + 1)
    """Event types to receive, or ``["*"]`` for all of them."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("url must not contain whitespace or control characters")
        try:
            parsed, split = URL(value), urlsplit(value)
            _ = split.port
        except ValueError:
            raise ValueError("url is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("url must be an absolute http or https URL")
        return value

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, value: list[Subscribable]) -> list[Subscribable]:
        return sorted(set(value))


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    active: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str
    """HMAC key for ``X-Goodbot-Signature``; shown once, here."""


class WebhookList(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


def _webhook_out(sub: WebhookSubscription) -> WebhookOut:
    return WebhookOut.model_validate(sub, from_attributes=True)


@api.route(
    "POST",
    "/webhooks",
    summary="Subscribe a URL to the tenant's events; the signing secret is returned once",
    permission="webhook.write",
    tag="webhooks",
    body=WebhookCreate,
    response=WebhookCreated,
    status=201,
    shows_secret=True,
)
async def create_webhook(req: ApiRequest) -> WebhookCreated:
    require(tenant_wide(req.me))
    body = req.body
    assert isinstance(body, WebhookCreate)
    refusal = literal_refusal(URL(body.url).host or "")
    if refusal is not None and not req.state.settings.webhook_allow_private_networks:
        raise UnprocessableError(refusal, field="url")
    me = req.me
    sub = WebhookSubscription(
        id=new_id("whk"),
        tenant_id=me.tenant_id,
        url=body.url,
        event_types=body.event_types,
        secret=new_secret(),
        active=True,
    )
    async with req.state.writing() as session:
        session.add(sub)
        await session.flush()
        # The host only: a URL's path or query often carries the receiver's own secret.
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="webhook_changed",
            action="webhook.create",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={"webhook_id": sub.id, "host": URL(sub.url).host, "event_types": sub.event_types},
        )
    return WebhookCreated(**_webhook_out(sub).model_dump(), secret=sub.secret)


@api.route(
    "GET",
    "/webhooks",
    summary="List the tenant's webhook subscriptions (never their secrets)",
    permission="webhook.read",
    tag="webhooks",
    query=Page,
    response=WebhookList,
)
async def list_webhooks(req: ApiRequest) -> WebhookList:
    require(tenant_wide(req.me))
    q = req.query
    assert isinstance(q, Page)
    after = decode_cursor(q.cursor)
    stmt = select(WebhookSubscription).where(
        WebhookSubscription.tenant_id == req.me.tenant_id, WebhookSubscription.active.is_(True)
    )
    if after is not None:
        stmt = stmt.where(WebhookSubscription.id > after)
    async with req.state.sessions() as session:
        rows = (
            await session.execute(stmt.order_by(WebhookSubscription.id).limit(q.limit + 1))
        ).scalars()
        page, cursor = paginate(rows, q.limit, lambda s: s.id)
    return WebhookList(items=[_webhook_out(s) for s in page], next_cursor=cursor)


@api.route(
    "DELETE",
    "/webhooks/{webhook_id}",
    summary="Delete a webhook subscription; its pending deliveries are cancelled",
    permission="webhook.write",
    tag="webhooks",
)
async def delete_webhook(req: ApiRequest) -> None:
    require(tenant_wide(req.me))
    me, webhook_id = req.me, req.path("webhook_id")
    async with req.state.writing() as session:
        sub = await session.get(WebhookSubscription, webhook_id) if _ID.match(webhook_id) else None
        if sub is None or sub.tenant_id != me.tenant_id or not sub.active:
            raise NotFoundError(f"no webhook {webhook_id!r}", field="webhook_id")
        # Kept, inactive, rather than deleted: its deliveries stay as the record of what was sent.
        sub.active = False
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == sub.id, WebhookDelivery.status == "pending")
            .values(status="cancelled")
            .execution_options(synchronize_session=False)
        )
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="webhook_changed",
            action="webhook.delete",
            outcome="success",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={"webhook_id": sub.id},
        )
