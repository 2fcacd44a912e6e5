"""Prefetch: pull a stream's new segments into the cache before the first viewer asks.

When a refreshed media playlist announces segments (or preload hints) the edge
has not seen in that playlist before, and somebody watched that stream lately,
they are fetched through the engine's normal coalesced path. A bounded queue
and a fixed number of workers keep it from ever becoming a load of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from livecdn import metrics
from livecdn.config import GuardSettings
from livecdn.engine import Engine
from livecdn.keys import cache_key
from livecdn.playlist import Announced

from .guard import directory

__all__ = ["Prefetcher"]

log = logging.getLogger("livecdn.prefetch")

# Segments waiting for a worker. A live stream announces one segment per
# rendition per target duration; a queue this deep only fills when upstream
# is slower than the stream itself, and then dropping is the right answer.
QUEUE_BOUND = 256
# Keys remembered as prefetched, to count whether their first request hit.
TRACKED_BOUND = 4096


class Prefetcher:
    def __init__(self, settings: GuardSettings, engine: Engine, node: str) -> None:
        self.settings = settings
        self.engine = engine
        self._queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_BOUND)
        self._last: OrderedDict[str, frozenset[str]] = OrderedDict()  # playlist → names it announced
        self._viewed: OrderedDict[str, float] = OrderedDict()  # stream directory → last request
        self._prefetched: OrderedDict[str, None] = OrderedDict()
        self._workers: list[asyncio.Task[None]] = []
        self._started = metrics.PREFETCHES.labels(node)
        self._hits = metrics.PREFETCH_HITS.labels(node)
        self._dropped = metrics.PREFETCH_DROPPED.labels(node)

    def start(self) -> None:
        if self._workers:
            raise RuntimeError("prefetcher already started")
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self.settings.prefetch_concurrency)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    def seen(self, path: str, key: str, cache: str) -> None:
        """A player asked for `key`: the stream is watched; a prefetched key may have paid off."""
        d = directory(path)
        self._viewed[d] = time.monotonic()
        self._viewed.move_to_end(d)
        if len(self._viewed) > self.settings.max_streams:
            self._viewed.popitem(last=False)
        if self._prefetched and key in self._prefetched:
            del self._prefetched[key]
            if cache == "hit":
                self._hits.inc()

    def learned(self, playlist: str, said: Announced) -> None:
        """A playlist was stored: queue what it announces for the first time."""
        fresh = said.segments + said.hints
        before = self._last.get(playlist)
        self._last[playlist] = frozenset(fresh)
        self._last.move_to_end(playlist)
        if len(self._last) > self.settings.max_streams:
            self._last.popitem(last=False)
        if before is None or not said.live:
            return  # first sighting: its whole window is history, not news
        now = time.monotonic()
        for name in fresh:
            if name in before:
                continue
            if now - self._viewed.get(directory(name), float("-inf")) > self.settings.viewer_idle:
                continue
            try:
                self._queue.put_nowait(name)
            except asyncio.QueueFull:
                self._dropped.inc()

    async def _work(self) -> None:
        while True:
            name = await self._queue.get()
            key = cache_key(name)
            done = self.engine.prefetch(key)
            if done is None:
                continue
            self._started.inc()
            self._prefetched[key.key] = None
            if len(self._prefetched) > TRACKED_BOUND:
                self._prefetched.popitem(last=False)
            await done
