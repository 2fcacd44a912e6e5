"""What an edge decides about a request, in the order it decides it.

Every request: the optional all-requests rate. A request that would cost a
new upstream fetch (nothing in memory, no fetch in flight to join): first the
guard (names that cannot exist get a 404 with no upstream fetch), then the
per-client miss bucket (429 with Retry-After) for what is left: real fetches. Every
answered request: the stream is being watched (prefetch follows it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from livecdn import metrics
from livecdn.cache.engine import Engine
from livecdn.cache.keys import BadRequest, CacheKey
from livecdn.cache.stored import Stored
from livecdn.config import EdgeConfig, LimitSettings

from .guard import StreamGuard
from .limits import ClientLimits
from .prefetch import Prefetcher

__all__ = ["EdgePolicy"]


class EdgePolicy:
    """The edge's policy hooks for the HTTP front (`livecdn.front.Policy`)."""

    def __init__(self, config: EdgeConfig, engine: Engine) -> None:
        self.engine = engine
        self.guard = StreamGuard(config.guard, engine, config.name)
        self.prefetcher = Prefetcher(config.guard, engine, config.name) if config.guard.prefetch else None
        self._limited = {k: metrics.RATE_LIMITED.labels(config.name, k) for k in ("miss", "request", "connections")}
        # The per-request hooks are bound once: a hit calls them directly, or not at all.
        self.seen: Callable[[CacheKey, str], None] | None = (
            self.prefetcher.seen if self.prefetcher is not None else None)
        self.apply(config.limits)
        engine.on_playlist(self._learn)

    def apply(self, limits: LimitSettings) -> None:
        """Use these per-client rate limits from now on (every client's buckets start full)."""
        self.limits = ClientLimits(limits)
        self.screen: Callable[[str], None] | None = self._screen if limits.request_rate else None

    def _learn(self, obj: Stored) -> None:
        said = self.guard.learn(obj)
        if said is not None and self.prefetcher is not None:
            expires_in = obj.born + obj.lifetime.fresh - time.time()
            self.prefetcher.learned(obj.key.partition("?")[0], said, expires_in)

    def _screen(self, client: str) -> None:
        wait = self.limits.request(client, time.monotonic())
        if wait:
            self._refuse("request", wait)

    async def admit(self, key: CacheKey, client: str) -> None:
        if self.engine.holds(key):
            return  # a stored copy, a disk lookup or a fetch in flight: no new upstream work
        await self.guard.check(key, client)
        if self.engine.holds(key):
            return  # a request that waited on the same guard refresh started the fetch
        wait = self.limits.miss(client, time.monotonic())
        if wait:
            self._refuse("miss", wait)

    def connection_refused(self) -> None:
        self._limited["connections"].inc()

    def _refuse(self, limit: str, wait: float) -> None:
        self._limited[limit].inc()
        raise BadRequest(f"too many requests ({limit} limit)", 429, (("Retry-After", str(math.ceil(wait))),))
