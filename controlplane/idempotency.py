"""Control plane idempotency keys: the store behind ``Idempotency-Key`` on mutating routes.

The route registry (``http.Api``) calls this after authentication, permission and input
validation, around the handler, so a request that never reached its handler stores nothing:

1. ``claim`` (its own short write transaction): forget the key if it expired, then
   ``INSERT … ON CONFLICT DO NOTHING`` a row owned by a fresh claim id and read the row back.
   The primary key (tenant, acting principal, key) makes this the one decision point on SQLite
   and PostgreSQL alike, across replicas too: exactly one request owns the claim, and the
   others see it. Another request's row means a replay (stored response), a misuse (other
   method, path or body: 422 ``idempotency_key_reused``) or a request still running (409
   ``idempotency_key_in_progress``; waiting would hold a transaction, or on SQLite the
   in-process write lock the handler itself needs, across the whole handler).
2. The handler runs in its own transactions, as without the header.
3. ``record`` stores a 2xx or a final 4xx; ``release`` deletes the claim after a 5xx, a
   transient 4xx (408, 425, 429) or an exception, so a retry runs the handler again.

A request cancelled mid-handler (a shutdown) keeps its claim until it expires: whether its
transaction committed is unknown, so a retry is answered "in progress" rather than run twice.
Keys live ``TTL``; ``sweeps`` deletes expired rows and ``claim`` replaces an expired one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web
from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.errors import (
    ApiError,
    BadRequestError,
    IdempotencyKeyInProgressError,
    IdempotencyKeyReusedError,
)
from controlplane.models import IdempotencyKey, utcnow
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

HEADER: Final = "Idempotency-Key"
"""The request header a client sets to make a mutating request safe to repeat."""
REPLAYED_HEADER: Final = "Idempotent-Replayed"
"""Set to ``true`` on a response replayed from the store."""
TTL: Final = timedelta(hours=24)
"""How long a key is remembered."""
MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""Methods the header applies to; on other methods it is ignored."""
KEY_PATTERN: Final = r"^[!-~]([ -~]{0,198}[!-~])?$"
"""1-200 printable ASCII characters, as the OpenAPI document states it (HTTP strips outer
spaces, so a key neither starts nor ends with one)."""
_KEY: Final = re.compile(r"^[ -~]{1,200}$")
_TRANSIENT: Final = frozenset({408, 425, 429})
"""4xx statuses a retry may turn into something else, so never stored."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies a keyed request, and what a repeat must match to be replayed."""

    tenant_id: str
    """The caller's tenant."""
    principal_id: str
    """The acting principal, after ``X-Act-As``."""
    key: str
    """The ``Idempotency-Key`` header's value."""
    method: str
    """HTTP method."""
    path: str
    """Path and query string."""
    request_hash: str
    """sha256 of the body, see ``request_hash``."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A finished request's response, to be sent again."""

    status: int
    """The HTTP status first sent."""
    content_type: str | None
    """Its content type; None for a response without a body."""
    body: str
    """The body exactly as first sent."""


def key_from(headers: Mapping[str, str]) -> str | None:
    """The request's idempotency key, None without the header; a malformed one is a 400."""
    value = headers.get(HEADER)
    if value is None:
        return None
    if not _KEY.match(value):
        raise BadRequestError(f"{HEADER} must be 1 to 200 printable ASCII characters", field=HEADER)
    return value


def request_hash(raw: dict[str, Any] | None, body: bytes) -> str:
    """sha256 of a request body: canonical JSON (sorted keys) when parsed, else the bytes.

    Key order and white space do not make two JSON bodies different requests.
    """
    data = body if raw is None else orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()


async def once(
    state: ServiceState,
    fp: Fingerprint,
    *,
    run: Callable[[], Awaitable[web.StreamResponse]],
    render: Callable[[ApiError], web.StreamResponse],
) -> web.StreamResponse:
    """Run a keyed request's handler at most once, or replay what its first run answered.

    Args:
        state: The service state (database).
        fp: The request's fingerprint.
        run: Runs the handler and returns its response.
        render: Turns an ``ApiError`` into the error response (so a final 4xx is stored in
            the one error shape).
    """
    claimed = await claim(state, fp, utcnow())
    if isinstance(claimed, Stored):
        replay = web.Response(status=claimed.status, body=claimed.body.encode())
        if claimed.content_type is not None:
            replay.content_type = claimed.content_type
        replay.headers[REPLAYED_HEADER] = "true"
        return replay
    try:
        response = await run()
    except ApiError as exc:
        if not storable(exc.status):
            await release(state, fp, claimed)
            raise
        response = render(exc)
    except Exception:
        await release(state, fp, claimed)
        raise
    stored = _stored(response)
    if stored is None:
        await release(state, fp, claimed)
        return response
    try:
        await record(state, fp, claimed, stored)
    except Exception:
        # The change is committed, so the client gets its answer; the key stays claimed (a
        # retry is told "in progress") until it expires.
        log.exception(
            "could not store the response of an idempotent request",
            extra={"method": fp.method, "path": fp.path},
        )
    return response


def storable(status: int) -> bool:
    """Whether a response with this status is final, and so stored for replay."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in _TRANSIENT)


async def claim(state: ServiceState, fp: Fingerprint, now: datetime) -> str | Stored:
    """Claim the key for this request, or find what an earlier request with it did.

    Returns:
        The claim id when this request owns the key and must run the handler; the stored
        response when a finished request with the same fingerprint owns it.

    Raises:
        IdempotencyKeyReusedError: The key belongs to a request with another method, path
            or body.
        IdempotencyKeyInProgressError: The same request is still running (or was just
            released after a failure; a retry will run it).
    """
    claim_id = uuid.uuid4().hex
    async with state.writing() as session:
        await session.execute(
            delete(IdempotencyKey).where(_is(fp), IdempotencyKey.expires_at <= now)
        )
        await session.execute(
            _insert_ignore(session).values(
                tenant_id=fp.tenant_id,
                principal_id=fp.principal_id,
                key=fp.key,
                claim=claim_id,
                method=fp.method,
                path=fp.path,
                request_hash=fp.request_hash,
                created_at=now,
                expires_at=now + TTL,
            )
        )
        row = (await session.execute(select(IdempotencyKey).where(_is(fp)))).scalar_one_or_none()
        if row is not None and row.claim == claim_id:
            return claim_id
        if row is not None and (row.method, row.path, row.request_hash) != (
            fp.method,
            fp.path,
            fp.request_hash,
        ):
            raise IdempotencyKeyReusedError(
                f"{HEADER} {fp.key!r} was used for another request; use a new key for a new"
                " request",
                field=HEADER,
                details={"method": row.method, "path": row.path},
            )
        if row is None or row.status is None:
            raise IdempotencyKeyInProgressError(
                f"a request with {HEADER} {fp.key!r} is still running; retry shortly",
                field=HEADER,
            )
        return Stored(row.status, row.content_type, row.response or "")


async def record(state: ServiceState, fp: Fingerprint, claim_id: str, stored: Stored) -> None:
    """Store the response of the request holding ``claim_id``."""
    async with state.writing() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(_is(fp), IdempotencyKey.claim == claim_id)
            .values(status=stored.status, content_type=stored.content_type, response=stored.body)
        )


async def release(state: ServiceState, fp: Fingerprint, claim_id: str) -> None:
    """Give the key up, so a retry runs the handler again."""
    async with state.writing() as session:
        await session.execute(
            delete(IdempotencyKey).where(_is(fp), IdempotencyKey.claim == claim_id)
        )


async def purge_expired(session: AsyncSession, now: datetime) -> int:
    """Delete every key that expired by ``now``; the number deleted."""
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)


def _stored(response: web.StreamResponse) -> Stored | None:
    """The response as the store keeps it; None when it must not be kept."""
    if not storable(response.status) or not isinstance(response, web.Response):
        return None
    raw = response.body
    if raw is None:
        return Stored(response.status, None, "")
    if not isinstance(raw, bytes):
        return None  # a streamed payload
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    if "\x00" in text:  # PostgreSQL text cannot hold it
        return None
    return Stored(response.status, response.content_type if text else None, text)


def _is(fp: Fingerprint) -> ColumnElement[bool]:
    return and_(
        IdempotencyKey.tenant_id == fp.tenant_id,
        IdempotencyKey.principal_id == fp.principal_id,
        IdempotencyKey.key == fp.key,
    )


def _insert_ignore(session: AsyncSession) -> Any:
    """``INSERT … ON CONFLICT (primary key) DO NOTHING`` for this dialect."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(IdempotencyKey).on_conflict_do_nothing(
        index_elements=["tenant_id", "principal_id", "key"]
    )
