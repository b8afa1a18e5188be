"""Sessions, beside the request path: token buckets in PostgreSQL, shared by every replica.

The policy layer's in-process bucket (``policy.limits.RateLimiter``) holds for one process;
behind a load balancer each replica would grant the full rate. Here one upsert per take
refills the bucket from the database's clock, spends a token if there is one and says
whether it did, so concurrent takes on any number of replicas serialize on the row lock and
the limit holds for all of them together. PostgreSQL only: SQLite is one process, where the
in-process bucket is exact and cheaper.
"""

from __future__ import annotations

import math
from typing import Any, Final, cast

from sqlalchemy import Float, Table, case, func, literal
from sqlalchemy.dialects import postgresql as pg

from sessions.db import Database
from sessions.models import RateBucket

TABLE: Final = cast(Table, RateBucket.__table__)


class SharedRateLimiter:
    """Per-key token buckets whose state lives in the ``rate_buckets`` table."""

    def __init__(self, db: Database) -> None:
        """Use the store's database (PostgreSQL).

        Raises:
            ValueError: the database is not PostgreSQL.
        """
        if db.engine.dialect.name != "postgresql":
            raise ValueError("shared rate limits need PostgreSQL")
        self.db = db

    async def take(self, key: str, per_minute: int) -> float | None:
        """Spend one token of ``key``'s bucket (``per_minute`` a minute, bursts as large).

        Returns:
            None when the take is allowed, else the seconds until a token is there.
        """
        capacity = float(per_minute)
        rate = per_minute / 60.0
        elapsed = func.extract("epoch", func.clock_timestamp() - TABLE.c.updated_at)
        refilled = func.least(literal(capacity, Float), TABLE.c.tokens + elapsed * rate)
        stmt = (
            pg.insert(TABLE)
            .values(key=key, tokens=capacity - 1.0, allowed=True, updated_at=func.clock_timestamp())
            .on_conflict_do_update(
                index_elements=[TABLE.c.key],
                set_={
                    "tokens": case((refilled >= 1.0, refilled - 1.0), else_=refilled),
                    "allowed": refilled >= 1.0,
                    "updated_at": func.clock_timestamp(),
                },
            )
            .returning(TABLE.c.allowed, TABLE.c.tokens)
        )
        async with self.db.writing() as conn:
            row: Any = (await conn.execute(stmt)).one()
        if row.allowed:
            return None
        return max(1.0, math.ceil((1.0 - float(row.tokens)) / rate))
