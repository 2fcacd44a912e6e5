"""Per-client limits: token buckets keyed by client address, in bounded memory.

Hits are cheap and stay unlimited by default; what a client can make the edge
do upstream (misses) is metered. The arithmetic is pure: every call takes `now`.
"""

from __future__ import annotations

from collections import OrderedDict

from livecdn.config import LimitSettings

__all__ = ["Buckets", "ClientLimits", "TokenBucket"]


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

    def give_back(self, burst: float) -> None:
        """Return a token taken for something that turned out to cost nothing it meters."""
        self.tokens = min(burst, self.tokens + 1)


class Buckets:
    """One token bucket per client address, for the `max_clients` seen most recently.

    The least recently seen address is forgotten first and comes back with a
    full bucket: a bound on memory, at the price of leniency towards a client
    idle long enough to be forgotten. A rate of 0 means unlimited.
    """

    __slots__ = ("rate", "burst", "max_clients", "_buckets")

    def __init__(self, rate: float, burst: int, max_clients: int) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, client: str, now: float) -> float:
        """Seconds to wait, or 0 when allowed."""
        if not self.rate:
            return 0.0
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.burst, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take(self.rate, self.burst, now)

    def give_back(self, client: str) -> None:
        """Return the token `client` took last (a client forgotten since then has a full bucket anyway)."""
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket.give_back(self.burst)


class ClientLimits:
    """The edge's per-client limits: misses, and optionally every request."""

    def __init__(self, settings: LimitSettings) -> None:
        # Seconds a client must wait before its next miss / request (0: go on); bound once.
        self.miss_wait = Buckets(settings.miss_rate, settings.miss_burst, settings.max_clients).take
        self.request_wait = Buckets(settings.request_rate, settings.request_burst, settings.max_clients).take
