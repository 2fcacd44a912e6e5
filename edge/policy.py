"""What an edge decides about a request, in the order it decides it.

Every request: its signed URL's token, where the topology asks for them
(`tokens`, edge/tokens.py: 403 with a reason); the optional all-requests
rate (`screen`). A request that would cost a new upstream fetch (nothing in
memory or on disk, no fetch in flight to join; the engine asks,
`livecdn.cache.engine.Admission`): first the guard (`check`: names that
cannot exist get a 404 with no upstream fetch; a name of a stream never seen
gets a try, settled by the engine with its answer: a 200 gives it back), then
the per-client miss bucket (`charge`: 429 with Retry-After) for what is left:
real fetches. Every answered request: the stream is being watched (`seen`:
prefetch follows it). Connections per client are counted by the listener
against this policy's `connections`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from livecdn import metrics
from livecdn.cache.engine import Admitted, Engine
from livecdn.cache.fill import CacheResult
from livecdn.cache.keys import BadRequest, CacheKey, origin_of, path_of
from livecdn.cache.stored import Stored
from livecdn.config import EdgeConfig, LimitSettings, SigningSettings
from livecdn.front.connlimit import ConnectionLimit
from livecdn.media.directives import too_far_ahead

from .guard import StreamGuard
from .limits import ClientLimits
from .prefetch import Prefetcher
from .tokens import TokenGate

__all__ = ["EdgePolicy"]


class EdgePolicy:
    """The edge's policy for the HTTP front (`livecdn.front.answers.Policy`) and the engine (`Admission`)."""

    def __init__(self, config: EdgeConfig, engine: Engine, shields: bool = False,
                 signing: SigningSettings | None = None) -> None:
        """`shields`: the edge's upstreams are shields (they answer only-if-cached; an origin would not);
        `signing`: the topology's signed URLs."""
        self._engine = engine
        self.guard = StreamGuard(config.guard, engine, config.name, only_if_cached=shields)
        self.prefetcher = Prefetcher(config.guard, engine, config.name) if config.guard.prefetch else None
        self._limited = {k: metrics.RATE_LIMITED.labels(config.name, k) for k in ("miss", "request", "connections")}
        self.connections = ConnectionLimit(config.limits.connections_per_client, self._limited["connections"].inc)
        # The per-request hooks are attributes the front reads per request: a
        # hit calls them directly, or not at all when they are None.
        self.seen: Callable[[CacheKey, CacheResult], None] | None = (
            self.prefetcher.seen if self.prefetcher is not None else None)
        self.screen: Callable[[str], None] | None = None
        self.limits: ClientLimits
        self.apply(config.limits)
        self.tokens: TokenGate | None = None
        self._name = config.name
        self.sign(signing)
        engine.on_playlist(self._learn)

    def apply(self, limits: LimitSettings) -> None:
        """Use these per-client limits from now on (every client's buckets start full)."""
        self.limits = ClientLimits(limits)
        self.screen = self._screen if limits.request_rate else None
        self.connections.limit = limits.connections_per_client

    def sign(self, signing: SigningSettings | None) -> None:
        """Check signed URLs with these keys from now on (None: no tokens needed); verified tokens are forgotten."""
        self.tokens = None if signing is None else TokenGate(signing, self._name)

    def _learn(self, obj: Stored) -> None:
        announced = self.guard.learn(obj)
        if announced is not None and self.prefetcher is not None:
            expires_in = obj.born + obj.lifetime.fresh - time.time()
            self.prefetcher.learned(path_of(obj.key), announced, expires_in, origin_of(obj.key))

    def _screen(self, client: str) -> None:
        wait = self.limits.request_wait(client, time.monotonic())
        if wait:
            self._refuse("request", wait)

    async def check(self, key: CacheKey, client: str) -> Admitted | None:
        if key.query and (held := self._engine.held(key)) is not None and (why := too_far_ahead(
                key.query, held.manifest.run, time.time() - held.born, held.manifest.info.target_duration)):
            raise BadRequest(why)
        return await self.guard.check(key, client)

    def charge(self, key: CacheKey, client: str) -> None:
        wait = self.limits.miss_wait(client, time.monotonic())
        if wait:
            self._refuse("miss", wait)

    def _refuse(self, limit: str, wait: float) -> None:
        self._limited[limit].inc()
        raise BadRequest(f"too many requests ({limit} limit)", 429, (("retry-after", str(math.ceil(wait))),))
