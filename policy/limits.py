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


@dataclass
class FailureLimiter:
    """Failed sign-ins per source (channel and client address): after ``max_failures`` within
    ``window`` seconds the source is refused every request, right or wrong, for ``block``
    seconds, so guessing tokens is slow and a right guess looks like a wrong one."""

    max_failures: int = 10
    window: float = 60.0
    block: float = 300.0
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _blocked: dict[str, float] = field(default_factory=dict)

    def wait(self, source: str, now: float) -> float:
        """Seconds ``source`` must still wait (0 when it may try)."""
        until = self._blocked.get(source)
        if until is None:
            return 0.0
        if now >= until:
            del self._blocked[source]
            self._failures.pop(source, None)
            return 0.0
        return until - now

    def fail(self, source: str, now: float) -> tuple[bool, bool]:
        """Count a failure at ``now``: (first in its window, the source is now blocked)."""
        recent = [t for t in self._failures.get(source, ()) if now - t < self.window]
        first = not recent
        recent.append(now)
        self._failures[source] = recent
        if len(self._failures) > 10_000:  # bound the memory an address sweep can take
            self._failures = {k: v for k, v in self._failures.items() if now - v[-1] < self.window}
        if len(recent) >= self.max_failures and source not in self._blocked:
            self._blocked[source] = now + self.block
            return first, True
        return first, False
