"""Control plane rate limiting: a token bucket per principal, answered with 429 and Retry-After.

Written by hand because it is a dozen lines in-process; the replicated gateway (issue 8) moves
limits it must share across processes into the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    """Token buckets keyed by principal id."""

    rate: float
    """Tokens added per second."""
    burst: int
    """Bucket size."""
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str, now: float) -> int | None:
        """Spend one token; return None when allowed, else the seconds to wait (at least 1)."""
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))
