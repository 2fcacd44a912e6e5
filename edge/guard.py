"""The edge's guard: refuse names that cannot exist before they cost an upstream fetch.

Every playlist the edge stores tells it which names exist right now: its
segments, parts, init sections, preload hints, keys, child playlists. The
guard keeps them per stream (the directory they live in) in Bloom filters
(`pybloom-live`). A media name that no playlist announced waits for the
stream's next coalesced, rate-limited refresh of its playlists, then gets a
404 with no upstream fetch. Names of streams never seen get a bounded number of upstream
tries, and only names that turn out not to exist spend them: a try is paid
when it is admitted and given back when the answer is a 200 (the first
viewers of a real stream cost nothing). Once the tries are spent, such names
are asked of the shield only-if-cached, a lookup there and never an origin
fetch, so a stream anyone watches through any edge is never refused. Filters
rotate by generation, so an endless live stream keeps memory bounded, while
the window's names, re-announced by every refresh, are never refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import NoReturn

from pybloom_live import BloomFilter

from livecdn import metrics
from livecdn.cache.engine import Engine
from livecdn.cache.keys import BadRequest, CacheKey, cache_key, path_of
from livecdn.cache.stored import Stored
from livecdn.config import GuardSettings
from livecdn.media.kinds import CONTENT_TYPES, is_hls_playlist, is_playlist
from livecdn.media.names import directory, extension
from livecdn.media.playlist import Announced

from .limits import Buckets, TokenBucket

__all__ = ["Generations", "StreamGuard"]

log = logging.getLogger("livecdn.edge.guard")

# Playlists remembered per stream as the ones to refresh when a name is unknown:
# a rendition directory is announced into by one media playlist, rarely more.
PLAYLISTS_PER_STREAM = 4
# Client addresses whose share of unknown-name tries is remembered.
CLIENTS_TRACKED = 100_000
# Seconds between two log lines saying the tries for unknown names are used up:
# an attack lasts, and its every request must not cost a line.
SPENT_LOG_INTERVAL = 10.0


class Generations:
    """Two Bloom filters: names go into the current one; both are checked.

    When the current filter holds `capacity` names it becomes the previous one
    and a new current filter starts, so memory is two filters however long
    the stream runs. A name re-announced since the rotation is in the current
    filter; one announced just before it is still in the previous one.
    """

    __slots__ = ("capacity", "error_rate", "current", "previous")

    def __init__(self, capacity: int, error_rate: float) -> None:
        self.capacity = capacity
        self.error_rate = error_rate
        self.current = BloomFilter(capacity, error_rate)
        self.previous: BloomFilter | None = None

    def add(self, name: str) -> None:
        if self.current.count >= self.capacity:
            self.previous, self.current = self.current, BloomFilter(self.capacity, self.error_rate)
        self.current.add(name)

    def __contains__(self, name: str) -> bool:
        return name in self.current or (self.previous is not None and name in self.previous)

    @property
    def nbytes(self) -> int:
        per_filter = (self.current.num_bits + 7) // 8
        return per_filter * (2 if self.previous is not None else 1)


class _Stream:
    """What the guard knows of one directory of names."""

    __slots__ = ("names", "playlists", "refreshing", "last_refresh")

    def __init__(self, settings: GuardSettings) -> None:
        self.names = Generations(settings.names_per_generation, settings.false_positive_rate)
        self.playlists: OrderedDict[str, None] = OrderedDict()  # paths to refresh for unknown names
        self.refreshing: asyncio.Future[None] | None = None
        self.last_refresh = float("-inf")


def _remember(stream: _Stream, playlist: str) -> None:
    stream.playlists[playlist] = None
    stream.playlists.move_to_end(playlist)
    if len(stream.playlists) > PLAYLISTS_PER_STREAM:
        stream.playlists.popitem(last=False)


class _Try:
    """An upstream try at a name of a stream never seen, paid when admitted (the engine's `Admitted`).

    `shared` is the edge-wide bucket it took a token from (None when that is
    unlimited); `wait` is how long until that bucket has a token, for the
    Retry-After of a try made only-if-cached that finds nothing.
    """

    __slots__ = ("guard", "client", "shared", "only_if_cached", "wait")

    def __init__(self, guard: StreamGuard, client: str, shared: TokenBucket | None,
                 only_if_cached: bool = False, wait: float = 0.0) -> None:
        self.guard, self.client, self.shared = guard, client, shared
        self.only_if_cached, self.wait = only_if_cached, wait

    def settle(self, status: int) -> None:
        self.guard.settle(self, status)


class StreamGuard:
    """Screens every request that misses the memory tier.

    Args:
        settings: the edge's guard settings.
        engine: used to refresh a stream's playlists (coalesced with any fetch in flight).
        node: the node's name (metrics, logs).
        only_if_cached: the tier above is a livecdn shield, which answers only-if-cached
            (an origin would fetch anyway): ask it so once the tries are spent.
    """

    def __init__(self, settings: GuardSettings, engine: Engine, node: str, only_if_cached: bool = False) -> None:
        self.engine = engine
        self.node = node
        self.only_if_cached = only_if_cached
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._spent_logged = float("-inf")
        self.configure(settings)
        self._rejected = {r: metrics.GUARD_REJECTIONS.labels(node, r)
                          for r in ("bad_name", "not_announced", "unknown_stream")}
        self._tried = {(asked, found): metrics.GUARD_UNKNOWN.labels(node, asked, found)
                       for asked in ("fetch", "only_if_cached") for found in ("yes", "no")}
        self._refreshes = metrics.GUARD_REFRESHES.labels(node)
        self._streams_gauge = metrics.GUARD_STREAMS.labels(node)

    def configure(self, settings: GuardSettings) -> None:
        """Take `settings` (at start and on reload): the budgets start full; streams already known keep
        their filters' geometry, new ones take the new one."""
        self.settings = settings
        self._unknown = TokenBucket(settings.unknown_burst, time.monotonic())
        self._probes = TokenBucket(settings.unknown_probe_burst, time.monotonic())
        # One client must not spend every try the edge allows for unknown names.
        self._per_client = Buckets(settings.unknown_client_rate, settings.unknown_client_burst, CLIENTS_TRACKED)

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def nbytes(self) -> int:
        return sum(s.names.nbytes for s in self._streams.values())

    # --- learning ---

    def learn(self, obj: Stored) -> Announced | None:
        """Take in what a stored playlist announces, as its fill read it; returns it (None when not read)."""
        announced = obj.manifest.announced if obj.manifest is not None else None
        if announced is None:
            return None
        path = path_of(obj.key)
        self._stream(directory(path)).names.add(path)  # a playlist that answered exists
        segments = frozenset(announced.segments)
        dash = not is_hls_playlist(extension(path))
        for name in announced.names:
            stream = self._stream(directory(name))
            stream.names.add(name)
            # Who can tell about more names here later: a live playlist for its
            # segments' directory, a child playlist for its own, an MPD for every
            # directory its names live in (it has no child playlists).
            if dash or (announced.live and name in segments):
                _remember(stream, path)
            elif is_hls_playlist(extension(name)):
                _remember(stream, name)
        self._streams_gauge.set(len(self._streams))
        return announced

    def _stream(self, d: str) -> _Stream:
        stream = self._streams.get(d)
        if stream is None:
            stream = self._streams[d] = _Stream(self.settings)
            if len(self._streams) > self.settings.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(d)
        return stream

    # --- screening ---

    async def check(self, key: CacheKey, client: str) -> _Try | None:
        """Let the request through, or raise BadRequest with the answer to give.

        Returns:
            For a name of a stream never seen, the try it was given, to be
            settled with the answer (None for names the guard knows).

        Raises:
            BadRequest: 404 for a name that cannot be a media object or that no
                playlist announced; 503 with Retry-After when names of unknown
                streams have used up their upstream tries (this client's share,
                or the edge's and its tries only-if-cached).
        """
        ext = key.extension
        if ext not in CONTENT_TYPES:
            self._rejected["bad_name"].inc()
            raise BadRequest(f"{ext or 'a name without extension'} is not a media object type", 404)
        path = key.path
        stream = self._streams.get(key.directory)
        if stream is not None:
            if path in stream.names:
                return None
            if not is_playlist(ext):
                if await self._refresh(stream, key.origin) and path in stream.names:
                    return None
                self._rejected["not_announced"].inc()
                raise BadRequest("not announced by the stream's playlists", 404)
        # A stream never seen, or a playlist nobody announces (an entry point):
        # worth an upstream try, but only so many of them.
        s = self.settings
        now = time.monotonic()
        wait = self._per_client.take(client, now)
        if wait:
            self._refuse(wait)
        if not s.unknown_rate:
            return _Try(self, client, None)
        wait = self._unknown.take(s.unknown_rate, s.unknown_burst, now)
        if not wait:
            return _Try(self, client, self._unknown)
        if now - self._spent_logged >= SPENT_LOG_INTERVAL:
            self._spent_logged = now
            log.warning("%s: the upstream tries for names of unknown streams are used up (the next in %.1f s): %s",
                        self.node, wait, "asking the shield only-if-cached" if self.only_if_cached else "503")
        if self.only_if_cached:
            # A stream anyone watches through any edge is at its shield: ask for that copy only.
            probes = self._probes if s.unknown_probe_rate else None
            if probes is None or not probes.take(s.unknown_probe_rate, s.unknown_probe_burst, now):
                return _Try(self, client, probes, True, wait)
        self._per_client.give_back(client)  # refused by the edge's bound, not by its own share
        self._refuse(wait)

    def settle(self, tried: _Try, status: int) -> None:
        """How a try was answered: a name that exists gives its tokens back; only-if-cached with no copy is refused.

        Raises:
            BadRequest: 503 with Retry-After, for a try made only-if-cached that the shield had no copy for.
        """
        found = 200 <= status < 300
        self._tried["only_if_cached" if tried.only_if_cached else "fetch", "yes" if found else "no"].inc()
        if found:  # it exists: a playlist's names are learned as it is stored; other objects stay cached
            self._per_client.give_back(tried.client)
            if tried.shared is not None:
                burst = self.settings.unknown_probe_burst if tried.only_if_cached else self.settings.unknown_burst
                tried.shared.give_back(burst)
        elif tried.only_if_cached and status == 504:
            self._refuse(tried.wait, " and the shield has no copy")

    def _refuse(self, wait: float, why: str = "") -> NoReturn:
        self._rejected["unknown_stream"].inc()
        raise BadRequest(f"unknown stream: upstream tries for unknown names are used up{why}", 503,
                         (("retry-after", str(max(1, round(wait)))),))

    async def _refresh(self, stream: _Stream, origin: str) -> bool:
        """One coalesced refresh of the stream's playlists (at `origin`, the asking key's); False with none to refresh.

        At most one per `refresh_interval`: asked sooner, the next one is set for
        when the interval is up and every request meanwhile waits for it. A name
        this worker has not seen yet is often real (a sibling worker stored the
        playlist naming it, an LL-HLS part is a moment old): refusing it would fail
        a player, and waiting costs the origin nothing more.
        """
        if stream.refreshing is None:
            if not stream.playlists:
                return False
            # A task of its own: a player that gives up waiting must not cancel it for the others.
            stream.refreshing = asyncio.ensure_future(self._refresh_when_due(stream, origin))
        await asyncio.shield(stream.refreshing)
        return True

    async def _refresh_when_due(self, stream: _Stream, origin: str) -> None:
        try:
            wait = stream.last_refresh + self.settings.refresh_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            stream.last_refresh = time.monotonic()
            self._refreshes.inc()
            await asyncio.gather(*(self.engine.refresh(cache_key(p, origin)) for p in stream.playlists),
                                 return_exceptions=True)
        finally:
            stream.refreshing = None
