"""Message limits: size and per-principal rate, each answered with a Decision naming the limit.

``RateLimiter`` is an in-process token bucket (a dozen lines), exact for one process. Limits
that must hold across gateway replicas go through a ``SharedRate`` (``sessions.ratelimit``, one
upsert in PostgreSQL), answered with the same Decision by ``rate_decision``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from policy.engine import Decision


def check_size(text: str, limit: int) -> Decision:
    """Refuse a message over ``limit`` UTF-8 bytes, naming the limit."""
    size = len(text.encode())
    if size > limit:
        return Decision(
            False, f"the message is {size} bytes; the limit is {limit} bytes", "limits.size"
        )
    return Decision(True, f"{size} of {limit} bytes", "limits.size")


class SharedRate(Protocol):
    """A rate limit every replica shares."""

    async def take(self, key: str, per_minute: int) -> float | None:
        """Spend one token of ``key``: None when allowed, else the seconds to wait."""
        ...


def rate_decision(per_minute: int, wait: float | None) -> Decision:
    """The Decision for a take that waited ``wait`` seconds (None: allowed)."""
    if wait is None:
        return Decision(True, "within the message rate", "limits.rate")
    return Decision(
        False,
        f"more than {per_minute} messages a minute; try again in {max(1, math.ceil(wait))} s",
        "limits.rate",
    )


@dataclass
class RateLimiter:
    """Token buckets per principal: ``per_minute`` tokens a minute, bursts of the same size."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, principal: str, per_minute: int, now: float) -> Decision:
        """Spend one message from the principal's bucket at monotonic time ``now``."""
        rate = per_minute / 60.0
        tokens, stamp = self._buckets.get(principal, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - stamp) * rate)
        if tokens >= 1.0:
            self._buckets[principal] = (tokens - 1.0, now)
            return Decision(True, "within the message rate", "limits.rate")
        self._buckets[principal] = (tokens, now)
        return rate_decision(per_minute, (1.0 - tokens) / rate)
