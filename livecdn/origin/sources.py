"""Where the origin's playlists and segments come from: a clock (synthetic) or ffmpeg's files.

Both answer the same three questions, so the HTTP side does not know which mode runs:
the master playlist of a stream, the current media playlist of a rendition, and a
segment by sequence number (None when it does not exist now).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from livecdn.config import OriginConfig, Rendition
from livecdn.origin import encoder as enc
from livecdn.origin.lowlatency import HOLD_TARGETS, PART_SEGMENTS, Parts
from livecdn.origin.synthetic import SegmentCache, etag_of
from livecdn.origin.timeline import H264_AAC_CODECS, Timeline, master_playlist, media_playlist

__all__ = ["Body", "PartStream", "Source", "SyntheticSource", "FfmpegSource", "RETAIN", "PLAYLIST", "SEGMENT"]

PLAYLIST = "application/vnd.apple.mpegurl"
SEGMENT = "video/mp2t"
RETAIN = 2  # segments kept past the window, as packagers do (ffmpeg: hls_delete_threshold)


@dataclass(frozen=True, slots=True)
class Body:
    """One answer: bytes plus what the HTTP side needs for caching headers."""

    data: bytes
    content_type: str
    max_age: int
    etag: str
    last_modified: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class PartStream:
    """A part still being made: its length, and its bytes as they are made (a preload hint's answer)."""

    size: int
    chunks: AsyncIterator[bytes]


# Parts stay downloadable this many target durations after they leave the playlist (rfc8216bis 6.2.2).
PART_KEPT_TARGETS = 3
# How often ffmpeg's part playlists are looked at: a small share of a part (0.5 s), cheap (one stat each).
PART_POLL = 0.02
# A synthetic part being made is released in this many pieces over its duration, as an encoder writes it.
PART_PIECES = 5


class Source(Protocol):
    renditions: tuple[Rendition, ...]

    async def start(self) -> None: ...
    async def stop(self, timeout: float) -> None: ...
    def healthy(self) -> bool: ...
    def master(self, stream: str) -> Body: ...
    async def media(self, stream: str, rendition: str) -> Body | None: ...
    async def segment(self, stream: str, rendition: str, seq: int) -> Body | None: ...
    # Low-latency mode only:
    def parts(self, stream: str, rendition: str) -> Parts | None: ...
    async def changed(self, stream: str, rendition: str, timeout: float, seen: Parts | None) -> None:
        """Return once the rendition's parts are past `seen` (what the caller read), or after `timeout`."""
    async def part(self, stream: str, rendition: str, msn: int, index: int) -> Body | PartStream | None: ...


def _playlist_max_age(target_duration: float) -> int:
    # Live media playlists change every target duration: half of it, at least 1 s.
    return max(1, int(target_duration / 2))


def _master_max_age(target_duration: float) -> int:
    # The master never changes while the origin runs, but stays short enough for a restart.
    return max(2, int(target_duration * 5))


SEGMENT_MAX_AGE = 3600


class SyntheticSource:
    """Segments from a clock: published on schedule, bytes from `synthetic.segment_body`."""

    def __init__(self, config: OriginConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.renditions = config.renditions
        self._clock = clock
        self._timeline: Timeline | None = None
        per_rendition = config.window + RETAIN + 2
        self._cache = SegmentCache(config.segment_bytes,
                                   per_rendition * len(config.streams) * len(config.renditions))
        self._masters = {s: master_playlist(config.renditions).encode() for s in config.streams}
        self._media: tuple[int, Body] | None = None

    @property
    def timeline(self) -> Timeline:
        if self._timeline is None:
            raise RuntimeError("synthetic source not started")
        return self._timeline

    async def start(self) -> None:
        self._timeline = Timeline(self._clock(), self.config.target_duration, self.config.window,
                                  RETAIN)

    async def stop(self, timeout: float) -> None:
        pass

    def healthy(self) -> bool:
        return self._timeline is not None

    def master(self, stream: str) -> Body:
        data = self._masters[stream]
        return Body(data, PLAYLIST, _master_max_age(self.config.target_duration), etag_of(data),
                    self.timeline.start)

    async def media(self, stream: str, rendition: str) -> Body | None:
        tl = self.timeline
        now = self._clock()
        produced = tl.produced(now)
        # Every rendition's playlist has the same text (relative URIs), and it only changes
        # when a segment is published: build it once per publication, not per request.
        cached = self._media
        if cached is not None and cached[0] == produced:
            return cached[1]
        text = media_playlist(tl, now)
        if text is None:
            return None
        data = text.encode()
        body = Body(data, PLAYLIST, _playlist_max_age(tl.target_duration), etag_of(data),
                    tl.published_at(produced - 1))
        self._media = (produced, body)
        return body

    async def segment(self, stream: str, rendition: str, seq: int) -> Body | None:
        tl = self.timeline
        if not tl.is_available(seq, self._clock()):
            return None
        data, etag = self._cache.get(stream, rendition, seq)
        return Body(data, SEGMENT, SEGMENT_MAX_AGE, etag, tl.published_at(seq))

    # --- low latency: part I of segment N is made during [N*T + I*p, N*T + (I+1)*p) ---

    @property
    def _per_segment(self) -> int:
        return round(self.config.target_duration / self.config.part_target)

    def _part_start(self, msn: int, index: int) -> float:
        return self.timeline.start + (msn * self._per_segment + index) * self.config.part_target

    def parts(self, stream: str, rendition: str) -> Parts | None:
        tl, p, per = self.timeline, self.config.part_target, self._per_segment
        now = self._clock()
        made = max(0, math.floor((now - tl.start) / p + 1e-9)) if now >= tl.start else 0
        making, done = divmod(made, per)
        listed = range(max(0, making - tl.window), making)
        if not listed and not done:
            return None
        return Parts(listed.start, tuple((p,) * per for _ in listed), (p,) * done, tl.target_duration, p)

    async def changed(self, stream: str, rendition: str, timeout: float, seen: Parts | None) -> None:
        # The part after `seen` is published at a known time: sleep until then (or `timeout`), no polling. Counted
        # from `seen`, not from now: a caller that read the state just before a part's time and asks just after
        # would otherwise sleep a whole part more (one blocking reload in ~150 was answered 500 ms late).
        made = seen.making * self._per_segment + len(seen.current) if seen is not None else 0
        left = self.timeline.start + (made + 1) * self.config.part_target - self._clock()
        if left > 0:
            await asyncio.sleep(min(timeout, left))

    def _part_bytes(self, stream: str, rendition: str, msn: int, index: int) -> bytes:
        data, _ = self._cache.get(stream, rendition, msn)
        size, per = len(data), self._per_segment
        return data[index * size // per:(index + 1) * size // per]

    async def part(self, stream: str, rendition: str, msn: int, index: int) -> Body | PartStream | None:
        if index >= self._per_segment:
            return None
        p, tl = self.config.part_target, self.timeline
        begins = self._part_start(msn, index)
        now = self._clock()
        if now >= begins + p:
            # Kept PART_KEPT_TARGETS past the moment it leaves the playlist, or while its segment is available.
            gone = tl.published_at(msn + PART_SEGMENTS) + PART_KEPT_TARGETS * tl.target_duration
            if now >= gone and not tl.is_available(msn, now):
                return None
            data = self._part_bytes(stream, rendition, msn, index)
            return Body(data, SEGMENT, SEGMENT_MAX_AGE, etag_of(data), begins + p)
        if begins - now > p:
            return None  # not the part being made, nor the next one (the preload hint): it does not exist
        data = self._part_bytes(stream, rendition, msn, index)
        return PartStream(len(data), self._made(data, begins))

    async def _made(self, data: bytes, begins: float) -> AsyncIterator[bytes]:
        """`data` released piece by piece at the times the part's frames are made."""
        step = -(-len(data) // PART_PIECES)
        for k in range(PART_PIECES):
            await asyncio.sleep(max(0.0, begins + (k + 1) * self.config.part_target / PART_PIECES - self._clock()))
            yield data[k * step:(k + 1) * step]


def parts_of(text: str, per: int, window: int, target: float, part_target: float) -> Parts | None:
    """The low-latency state in ffmpeg's part playlist (`part<K>.ts` with EXTINF): complete segments are
    runs of `per` parts starting at a multiple of `per`, the newest `window` of them listed."""
    durations: dict[int, float] = {}
    pending: float | None = None
    for line in text.splitlines():
        if line.startswith("#EXTINF:"):
            with contextlib.suppress(ValueError):
                pending = float(line[8:].split(",")[0])
        elif line.startswith("part") and line.endswith(".ts") and line[4:-3].isdigit() and pending is not None:
            durations[int(line[4:-3])] = pending
            pending = None
    if not durations:
        return None
    newest = max(durations)
    making, done = divmod(newest + 1, per)
    complete: list[tuple[float, ...]] = []
    msn = making - 1
    while msn >= 0 and len(complete) < window and all(msn * per + i in durations for i in range(per)):
        complete.insert(0, tuple(durations[msn * per + i] for i in range(per)))
        msn -= 1
    current = tuple(durations[making * per + i] for i in range(done))
    if not complete and not current:
        return None
    return Parts(msn + 1, tuple(complete), current, target, part_target)


def _read(path: Path) -> tuple[bytes, os.stat_result] | None:
    """Bytes and stat of one file, None if it is gone (runs in a worker thread)."""
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except (FileNotFoundError, NotADirectoryError):
        return None


class FfmpegSource:
    """Real H.264/AAC from ffmpeg's test source; serves the files ffmpeg writes."""

    def __init__(self, config: OriginConfig) -> None:
        self.config = config
        self.renditions = enc.encoded_renditions(config.renditions)
        self._work_dir: Path | None = None
        self._own_work_dir = False
        self._encoders: dict[str, enc.Encoder] = {}
        self._masters = {s: master_playlist(self.renditions, H264_AAC_CODECS).encode()
                         for s in config.streams}
        self._started_at = 0.0
        # Low latency: each rendition's parts as last read from ffmpeg's playlist, and the event the next
        # change sets (a new one per change), filled by one watcher task.
        self._parts: dict[tuple[str, str], Parts] = {}
        self._changes: dict[tuple[str, str], asyncio.Event] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ffmpeg = enc.find_ffmpeg()
        if self.config.work_dir:
            self._work_dir = Path(self.config.work_dir)
            self._work_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._work_dir = Path(tempfile.mkdtemp(prefix=f"livecdn-{self.config.name}-"))
            self._own_work_dir = True
        self._started_at = time.time()
        for i, stream in enumerate(self.config.streams):
            e = enc.Encoder(ffmpeg, stream, self._work_dir / stream, self.renditions,
                            self.config.target_duration, self.config.window, RETAIN,
                            enc.tone_for(i), self.config.part_target if self.config.low_latency else None)
            self._encoders[stream] = e
            await e.start()
        # Ready means playable: every rendition has published its first segment.
        ready_timeout = 3 * self.config.target_duration + 20
        await asyncio.gather(*(e.wait_ready(ready_timeout) for e in self._encoders.values()))
        if self.config.low_latency:
            self._watcher = asyncio.ensure_future(self._watch())

    async def stop(self, timeout: float) -> None:
        encoders, self._encoders = list(self._encoders.values()), {}
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        try:
            # One at a time, like aiohttp's cleanup: an error leaves no half-known state.
            for e in encoders:
                await e.stop(timeout)
        finally:
            if self._own_work_dir and self._work_dir is not None:
                await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(shutil.rmtree, self._work_dir, ignore_errors=True))
            self._work_dir = None
            self._own_work_dir = False

    def healthy(self) -> bool:
        return bool(self._encoders) and all(e.running for e in self._encoders.values())

    def master(self, stream: str) -> Body:
        data = self._masters[stream]
        return Body(data, PLAYLIST, _master_max_age(self.config.target_duration), etag_of(data),
                    self._started_at)

    async def _file(self, path: Path) -> tuple[bytes, os.stat_result] | None:
        return await asyncio.get_running_loop().run_in_executor(None, _read, path)

    def _dir(self, stream: str, rendition: str) -> Path:
        if self._work_dir is None:
            raise RuntimeError("ffmpeg source not started")
        return self._work_dir / stream / rendition

    async def media(self, stream: str, rendition: str) -> Body | None:
        # Fresh from disk every time: ffmpeg renames a complete new playlist into place.
        got = await self._file(self._dir(stream, rendition) / "index.m3u8")
        if got is None:
            return None
        data, st = got
        return Body(data, PLAYLIST, _playlist_max_age(self.config.target_duration), etag_of(data),
                    st.st_mtime)

    # --- low latency: ffmpeg writes part<K>.ts; segment N is parts N*per .. N*per+per-1 ---

    @property
    def _per_segment(self) -> int:
        return round(self.config.target_duration / self.config.part_target)

    async def _watch(self) -> None:
        """Follow ffmpeg's part playlists: a short poll of their modification times (the stdlib has no
        file-change event), each change read once and told to the requests waiting for it."""
        keys = [(s, r.name) for s in self.config.streams for r in self.renditions]
        loop = asyncio.get_running_loop()
        while True:
            for key in keys:
                path = self._dir(*key) / "index.m3u8"
                try:
                    mtime = (await loop.run_in_executor(None, os.stat, path)).st_mtime_ns
                except FileNotFoundError:
                    continue
                if self._seen.get(key) == mtime:
                    continue
                got = await self._file(path)
                if got is None:
                    continue
                self._seen[key] = mtime
                parts = parts_of(got[0].decode(errors="replace"), self._per_segment, self.config.window,
                                 self.config.target_duration, self.config.part_target)
                if parts is not None:
                    self._parts[key] = parts
                    self._changes.pop(key, asyncio.Event()).set()
            await asyncio.sleep(PART_POLL)

    def parts(self, stream: str, rendition: str) -> Parts | None:
        return self._parts.get((stream, rendition))

    async def changed(self, stream: str, rendition: str, timeout: float, seen: Parts | None) -> None:
        if self._parts.get((stream, rendition)) is not seen:
            return  # the watcher read a newer state after the caller's (while it read a file, say)
        event = self._changes.setdefault((stream, rendition), asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _part_file(self, stream: str, rendition: str, k: int) -> tuple[bytes, os.stat_result] | None:
        return await self._file(self._dir(stream, rendition) / f"part{k}.ts")

    async def part(self, stream: str, rendition: str, msn: int, index: int) -> Body | PartStream | None:
        per = self._per_segment
        if index >= per:
            return None
        k = msn * per + index
        parts = self.parts(stream, rendition)  # read before the file: what `changed` waits to pass
        got = await self._part_file(stream, rendition, k)
        if got is None:
            # The part being made or the next one (a preload hint): held until ffmpeg has finished it.
            newest = parts.making * per + len(parts.current) - 1 if parts is not None else -1
            if not newest < k <= newest + 2:
                return None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HOLD_TARGETS * self.config.target_duration
            while got is None and (left := deadline - loop.time()) > 0:
                await self.changed(stream, rendition, left, parts)
                parts = self.parts(stream, rendition)
                got = await self._part_file(stream, rendition, k)
            if got is None:
                return None
        data, st = got
        return Body(data, SEGMENT, SEGMENT_MAX_AGE, etag_of(data), st.st_mtime)

    async def _ll_segment(self, stream: str, rendition: str, seq: int) -> Body | None:
        per = self._per_segment
        pieces = [await self._part_file(stream, rendition, seq * per + i) for i in range(per)]
        if any(p is None for p in pieces):
            return None
        data = b"".join(p[0] for p in pieces if p is not None)
        return Body(data, SEGMENT, SEGMENT_MAX_AGE, etag_of(data), max(p[1].st_mtime for p in pieces if p))

    async def segment(self, stream: str, rendition: str, seq: int) -> Body | None:
        if self.config.low_latency:
            return await self._ll_segment(stream, rendition, seq)
        # Only complete segments have this name: ffmpeg writes seg<N>.ts.tmp, then renames.
        got = await self._file(self._dir(stream, rendition) / f"seg{seq}.ts")
        if got is None:
            return None
        data, st = got
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        return Body(data, SEGMENT, SEGMENT_MAX_AGE, etag, st.st_mtime)
