"""Sessions, beside the request path: the confirmation state machine tools drive through.

pending → confirmed → executing → executed | failed, and pending → denied | expired. Every
transition is one conditional UPDATE (it names the state it leaves), so of any number of
concurrent clicks, replays or replicas exactly one moves a confirmation, and the others learn
precisely why they did not. Each transition and each refusal is appended to the audit chain in
the same transaction; the audit names the tool and the arguments hash, never the arguments.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final, Literal, cast

import orjson
from sqlalchemy import Row, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from sessions.audit import AuditChain, NewAudit
from sessions.canonical import canonical, sha256_hex, to_json
from sessions.models import Confirmation as ConfirmationRow
from sessions.results import Confirmation, ConfirmationState, Decided, Decision

DEFAULT_TTL: Final = timedelta(minutes=10)
"""How long a confirmation may wait for its decision unless the caller says otherwise."""

ERROR_MAX: Final = 2000
"""Longest error text kept (the rest is cut)."""

TABLE: Final = cast(Table, ConfirmationRow.__table__)
_C: Final = TABLE.c


def from_row(row: Row[Any]) -> Confirmation:
    """A stored confirmation row as its result dataclass."""
    return Confirmation(
        id=row.id,
        principal_id=row.principal_id,
        conversation_id=row.conversation_id,
        channel=row.channel,
        tool=row.tool,
        arguments=orjson.loads(row.arguments),
        arguments_hash=row.arguments_hash,
        summary=row.summary,
        state=row.state,
        created_at=row.created_at,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        executed_at=row.executed_at,
        idempotency_key=row.idempotency_key,
        result=row.result,
        error=row.error,
    )


def _audit(
    kind: str, row: Row[Any] | Confirmation, principal_id: str | None = None, **data: Any
) -> NewAudit:
    return NewAudit(
        type=f"confirmation.{kind}",
        principal_id=principal_id or row.principal_id,
        channel=row.channel,
        conversation_id=row.conversation_id,
        data={
            "confirmation_id": row.id,
            "tool": row.tool,
            "arguments_hash": row.arguments_hash,
            **data,
        },
    )


async def create(
    conn: AsyncConnection,
    chain: AuditChain,
    *,
    principal_id: str,
    conversation_id: str,
    channel: str,
    tool: str,
    arguments: Mapping[str, Any],
    summary: str,
    ttl: timedelta,
    now: datetime,
) -> Confirmation:
    """Store a pending confirmation and audit it; the fields are ``Confirmation``'s."""
    if ttl <= timedelta(0):
        raise ValueError("a confirmation's ttl must be positive")
    text = canonical(to_json(dict(arguments)))
    confirmation = Confirmation(
        # 144 random bits: the id is shown on cards and typed back, and must not be guessable.
        id="cf_" + secrets.token_urlsafe(18),
        principal_id=principal_id,
        conversation_id=conversation_id,
        channel=channel,
        tool=tool,
        arguments=orjson.loads(text),
        arguments_hash=sha256_hex(text),
        summary=summary,
        state="pending",
        created_at=now,
        expires_at=now + ttl,
        decided_at=None,
        decided_by=None,
        executed_at=None,
        idempotency_key="gb-" + secrets.token_hex(16),
        result=None,
        error=None,
    )
    values = {c.name: getattr(confirmation, c.name) for c in TABLE.c}
    await conn.execute(insert(TABLE).values(values | {"arguments": text.decode()}))
    audit = _audit("created", confirmation, expires_at=confirmation.expires_at.isoformat())
    await chain.append(conn, [audit], now)
    return confirmation


async def decide(
    conn: AsyncConnection,
    chain: AuditChain,
    confirmation_id: str,
    principal_id: str,
    decision: Decision,
    arguments_hash: str | None,
    now: datetime,
) -> Decided:
    """Confirm or deny a pending confirmation, or say precisely why not (see the store)."""
    state: Literal["confirmed", "denied"] = "confirmed" if decision == "confirm" else "denied"
    conditions = [
        _C.id == confirmation_id,
        _C.state == "pending",
        _C.principal_id == principal_id,
        _C.expires_at > now,
    ]
    if arguments_hash is not None:
        conditions.append(_C.arguments_hash == arguments_hash)
    for _ in range(2):
        moved = await _move(conn, conditions, state=state, decided_at=now, decided_by=principal_id)
        if moved is not None:
            await chain.append(conn, [_audit(state, moved)], now)
            return Decided(state, f"{state} by {principal_id}", from_row(moved))
        refused = await _why_not(conn, confirmation_id, principal_id, arguments_hash, now)
        if refused is not None:
            break
    else:
        raise RuntimeError(f"confirmation {confirmation_id} is decidable yet did not move")
    row = refused.confirmation
    if row is None:
        data = {"confirmation_id": confirmation_id, "outcome": refused.outcome}
        audit = NewAudit("confirmation.refused", principal_id, None, None, data)
    elif refused.outcome == "expired":
        audit = _audit("expired", row, principal_id, attempted=decision)
    else:
        audit = _audit("refused", row, principal_id, outcome=refused.outcome, state=row.state)
    await chain.append(conn, [audit], now)
    if refused.outcome == "wrong_principal":
        # Nothing about someone else's confirmation goes back to the caller.
        return Decided(refused.outcome, refused.reason, None)
    return refused


async def _why_not(
    conn: AsyncConnection,
    confirmation_id: str,
    principal_id: str,
    arguments_hash: str | None,
    now: datetime,
) -> Decided | None:
    """Why the conditional UPDATE matched nothing, expiring the confirmation if that is why.

    None when nothing stands in the way, so the caller tries the UPDATE once more. No state
    leads back to pending, so this should never happen twice in a row; if it does, the SQL
    conditions and these checks disagree, which is a bug to surface, not to loop on.
    """
    row = (await conn.execute(select(TABLE).where(_C.id == confirmation_id))).first()
    if row is None:
        return Decided("unknown", "there is no confirmation with that id", None)
    if row.principal_id != principal_id:
        return Decided(
            "wrong_principal", "this confirmation belongs to someone else", from_row(row)
        )
    if row.state != "pending":
        return Decided(
            "already_decided", f"this confirmation is already {row.state}", from_row(row)
        )
    if row.expires_at <= now:
        expired = await _move(
            conn, [_C.id == confirmation_id, _C.state == "pending"], state="expired", decided_at=now
        )
        current = from_row(expired or row)
        return Decided(
            "expired",
            f"this confirmation expired at {row.expires_at.isoformat(timespec='seconds')}",
            current,
        )
    if arguments_hash is not None and row.arguments_hash != arguments_hash:
        return Decided(
            "arguments_changed",
            "the arguments differ from the ones this confirmation was asked for",
            from_row(row),
        )
    return None


async def begin_execution(
    conn: AsyncConnection, chain: AuditChain, confirmation_id: str, now: datetime
) -> bool:
    """Move confirmed → executing; False when it is not (any longer) confirmed."""
    moved = await _move(
        conn, [_C.id == confirmation_id, _C.state == "confirmed"], state="executing"
    )
    if moved is None:
        return False
    await chain.append(conn, [_audit("executing", moved)], now)
    return True


async def finish_execution(
    conn: AsyncConnection,
    chain: AuditChain,
    confirmation_id: str,
    result: Any,
    error: str | None,
    now: datetime,
) -> bool:
    """Move executing → executed (no ``error``) or failed; False when it is not executing."""
    state: ConfirmationState = "executed" if error is None else "failed"
    kept = None if error is None else error[:ERROR_MAX]
    moved = await _move(
        conn,
        [_C.id == confirmation_id, _C.state == "executing"],
        state=state,
        executed_at=now,
        result=to_json(result) if error is None else None,
        error=kept,
    )
    if moved is None:
        return False
    extra = {} if kept is None else {"error": kept}
    await chain.append(conn, [_audit(state, moved, **extra)], now)
    return True


async def expire_due(conn: AsyncConnection, chain: AuditChain, now: datetime) -> int:
    """Mark every pending confirmation past its expiry ``expired``; how many there were."""
    moved = (
        await conn.execute(
            update(TABLE)
            .where(_C.state == "pending", _C.expires_at <= now)
            .values(state="expired", decided_at=now)
            .returning(*TABLE.c)
        )
    ).all()
    await chain.append(conn, [_audit("expired", row) for row in moved], now)
    return len(moved)


async def _move(
    conn: AsyncConnection, conditions: list[ColumnElement[bool]], **values: Any
) -> Row[Any] | None:
    """One conditional UPDATE; the updated row, or None when the conditions matched nothing."""
    stmt = update(TABLE).where(*conditions).values(**values).returning(*TABLE.c)
    return (await conn.execute(stmt)).first()
