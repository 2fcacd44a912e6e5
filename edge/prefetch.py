"""Prefetch: pull a stream's new segments into the cache before the first viewer asks.

A watched live playlist is refreshed as soon as it expires, on a timer rather
than on the next viewer's reload, so the edge learns of a new segment within
half a target duration of its tier above. When a refreshed media playlist
announces segments (or preload hints) the edge has not seen in that playlist
before, and somebody watched that stream lately, they are fetched through the
engine's normal coalesced path. A bounded queue
and a fixed number of workers keep it from ever becoming a load of its own.

A live MPD is polled the same way, so the guard's view of its template names
moves with the clock; its segments are prefetched only where the packager
lists them (SegmentTimeline, SegmentList): a name computed from `$Number$`
and the clock may not be on the origin yet, and a prefetched 404 would be
cached for every viewer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict

from livecdn import metrics
from livecdn.cache.engine import Engine
from livecdn.cache.fill import CacheResult
from livecdn.cache.keys import CacheKey, cache_key
from livecdn.config import GuardSettings
from livecdn.logs import report_death
from livecdn.media.kinds import PLAYLISTS
from livecdn.media.names import directory
from livecdn.media.playlist import Announced

__all__ = ["Prefetcher"]

HIT = CacheResult.HIT  # bound once: an enum member's lookup costs a hit ~0.1 us

log = logging.getLogger("livecdn.prefetch")

# Segments waiting for a worker. A live stream announces one segment per
# rendition per target duration; a queue this deep only fills when upstream
# is slower than the stream itself, and then dropping is the right answer.
QUEUE_BOUND = 256
# Keys remembered as prefetched, to count whether their first request hit.
TRACKED_BOUND = 4096
# Never poll a playlist more often than this, whatever its lifetime says.
MIN_POLL = 0.25
# How stale a stream's last-request time may be (viewer_idle is counted in seconds).
VIEW_RESOLUTION = 0.1


class Prefetcher:
    def __init__(self, settings: GuardSettings, engine: Engine, node: str) -> None:
        self.settings = settings
        self.engine = engine
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(QUEUE_BOUND)  # (origin, name)
        # playlist → (names it announced, when the stored copy expires; None unless live, its origin)
        self._last: OrderedDict[str, tuple[frozenset[str], float | None, str]] = OrderedDict()
        self._viewed: OrderedDict[str, float] = OrderedDict()  # stream directory → last request
        self._prefetched: OrderedDict[str, None] = OrderedDict()
        self._workers: list[asyncio.Task[None]] = []
        self._polls: dict[str, asyncio.TimerHandle] = {}  # watched live playlist → its next refresh
        self._refreshes: set[asyncio.Future[None]] = set()
        self._started = metrics.PREFETCHES.labels(node)
        self._hits = metrics.PREFETCH_HITS.labels(node)
        self._dropped = metrics.PREFETCH_DROPPED.labels(node)

    def start(self) -> None:
        if self._workers:
            raise RuntimeError("prefetcher already started")
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self.settings.prefetch_concurrency)]
        for worker in self._workers:
            worker.add_done_callback(report_death(log, "prefetch worker"))

    async def stop(self) -> None:
        for handle in self._polls.values():
            handle.cancel()
        self._polls.clear()
        tasks = [*self._workers, *self._refreshes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    def seen(self, key: CacheKey, cache: CacheResult) -> None:
        """A player asked for `key`: the stream is watched; a prefetched key may have paid off.

        Called for every request, hits included, so it does the least it can:
        the stream's last-request time moves at most every VIEW_RESOLUTION.
        """
        now = time.monotonic()
        viewed, d = self._viewed, key.directory
        if now - viewed.get(d, -math.inf) >= VIEW_RESOLUTION:
            viewed[d] = now
            viewed.move_to_end(d)
            if len(viewed) > self.settings.max_streams:
                viewed.popitem(last=False)
        path = key.path
        if path not in self._polls and key.extension in PLAYLISTS:
            self._schedule(path)  # a viewer is back: poll again
        if self._prefetched and key.key in self._prefetched:
            del self._prefetched[key.key]
            if cache is HIT:
                self._hits.inc()

    def learned(self, playlist: str, announced: Announced, expires_in: float, origin: str = "") -> None:
        """A playlist was stored: queue what it announces for the first time.

        Args:
            playlist: its path.
            announced: what it announces.
            expires_in: seconds until the stored copy expires (its next refresh).
            origin: the origin identity of its key, which its names are fetched from.
        """
        fresh = announced.segments + announced.hints
        before = self._last.get(playlist)
        expires_at = time.monotonic() + expires_in
        self._last[playlist] = (frozenset(fresh), expires_at if announced.live else None, origin)
        self._last.move_to_end(playlist)
        self._schedule(playlist)
        if len(self._last) > self.settings.max_streams:
            self._last.popitem(last=False)
        if before is None or not announced.live:
            return  # first sighting: its whole window is history, not news
        for name in fresh:
            if name in before[0] or not self._watched(directory(name)):
                continue
            try:
                self._queue.put_nowait((origin, name))
            except asyncio.QueueFull:
                self._dropped.inc()

    def _schedule(self, playlist: str) -> None:
        """Poll a watched live playlist when its stored copy expires (one timer per playlist)."""
        last = self._last.get(playlist)
        if last is None or last[1] is None or playlist in self._polls or not self._watched(directory(playlist)):
            return
        delay = max(MIN_POLL, last[1] - time.monotonic())
        self._polls[playlist] = asyncio.get_running_loop().call_later(delay, self._poll, playlist)

    def _watched(self, d: str) -> bool:
        return time.monotonic() - self._viewed.get(d, float("-inf")) <= self.settings.viewer_idle

    def _poll(self, playlist: str) -> None:
        """Refresh a watched live playlist now; storing it schedules the next poll."""
        del self._polls[playlist]
        if not self._watched(directory(playlist)):
            return  # nobody watches any more: the chain ends until a viewer comes back
        last = self._last.get(playlist)
        if last is not None and last[1] is not None and last[1] > time.monotonic():
            # Stored again since this poll was set (a viewer came back while the refresh was in flight and
            # set another): refreshing now would ask upstream twice in one expiry. Wait for this copy's.
            self._schedule(playlist)
            return
        task = asyncio.ensure_future(self.engine.refresh(cache_key(playlist, last[2] if last else "")))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)
        task.add_done_callback(report_death(log, f"poll of {playlist}"))

    async def _work(self) -> None:
        while True:
            origin, name = await self._queue.get()
            try:
                await self._prefetch(name, origin)
            except Exception:  # noqa: BLE001 - one name's bug must not stop this worker for good
                log.exception("prefetch of %s failed", name)

    async def _prefetch(self, name: str, origin: str) -> None:
        key = cache_key(name, origin)
        done = self.engine.prefetch(key)
        if done is None:
            return
        self._started.inc()
        self._prefetched[key.key] = None
        if len(self._prefetched) > TRACKED_BOUND:
            self._prefetched.popitem(last=False)
        await done
