"""Per-station request rate limits: one token bucket per station, in plain Python with an injected
clock (no Ray, no I/O), unit-tested with a fake clock.

Guarantees:
- A station may send ``burst`` requests at once, then ``rate`` per second on average; a request
  over that is refused with the seconds until the next one would be allowed. A refused request
  takes no token, so a station that keeps flooding is refused no longer than one that waits.
- Stations are independent: one station's flood never uses another's tokens.
- Memory is one small record per station that sent a request (stations come from the keys file).

Each ingress replica keeps its own buckets; the builder divides the configured rate and burst among
the replicas (Serve spreads requests over them), so the limit holds per station for the whole app
to within the spread. A token bucket is a dozen lines; the rate-limit libraries on PyPI either wait
instead of refusing (aiolimiter) or count windows (limits), so it is written here.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be above 0 and burst at least 1")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, station: str) -> float:
        """Spend one of ``station``'s tokens: 0.0 when allowed, else the seconds until it would be."""
        now = self._clock()
        bucket = self._buckets.get(station)
        if bucket is None:
            bucket = self._buckets[station] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate
