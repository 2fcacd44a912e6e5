"""Per-client limits: token buckets keyed by client address, in bounded memory.

Hits are cheap and stay unlimited by default; what a client can make the edge
do upstream (misses) is metered. The arithmetic is pure: every call takes `now`.
"""

from __future__ import annotations

from collections import OrderedDict

from livecdn.config import LimitSettings

__all__ = ["TokenBucket", "ClientLimits"]


class TokenBucket:
    """`rate` tokens a second up to `burst`; a request takes one."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now

    def take(self, rate: float, burst: float, now: float) -> float:
        """Take a token; returns 0 when allowed, else the seconds until one is available."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


class ClientLimits:
    """The buckets of every client address seen lately.

    At most `max_clients` addresses are tracked; the least recently seen is
    forgotten first, and comes back with a full bucket (a bound on memory, at
    the price of leniency towards a client idle long enough to be forgotten).
    """

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._miss: OrderedDict[str, TokenBucket] = OrderedDict()
        self._all: OrderedDict[str, TokenBucket] = OrderedDict()

    def miss(self, client: str, now: float) -> float:
        """A request that misses the memory tier; seconds to wait, or 0."""
        s = self.settings
        return _take(self._miss, client, s.miss_rate, s.miss_burst, s.max_clients, now) if s.miss_rate else 0.0

    def request(self, client: str, now: float) -> float:
        """Any request; seconds to wait, or 0."""
        s = self.settings
        return _take(self._all, client, s.request_rate, s.request_burst, s.max_clients, now) if s.request_rate else 0.0


def _take(buckets: OrderedDict[str, TokenBucket], client: str, rate: float, burst: int,
          max_clients: int, now: float) -> float:
    bucket = buckets.get(client)
    if bucket is None:
        bucket = buckets[client] = TokenBucket(burst, now)
        if len(buckets) > max_clients:
            buckets.popitem(last=False)
    else:
        buckets.move_to_end(client)
    return bucket.take(rate, burst, now)
