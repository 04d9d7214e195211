"""Per-key token buckets for alert ingestion, so a runaway monitor cannot starve the duty
officers (api.md, Conventions: 5,000 alerts/s sustained, bursts of 10,000 by default).

Buckets live in each serving process: with N API processes a key may reach N times the rate.
"""

from __future__ import annotations

import math
import time

from app.core.errors import RateLimited


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, n: float) -> float:
        """Take `n` tokens; returns 0, or the seconds to wait until they would be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str, cost: int) -> None:
        """Raise a 429 problem (with Retry-After) when `key` is over its rate."""
        if not self.enabled:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        if cost > self.burst:
            raise RateLimited(f"{cost} alerts exceed this key's burst of {self.burst}",
                              headers={"Retry-After": "1"})
        wait = bucket.take(cost)
        if wait > 0:
            raise RateLimited(
                f"This key is limited to {self.rate:g} alerts/s (bursts of {self.burst}).",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
