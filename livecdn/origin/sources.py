"""Where the origin's playlists and segments come from: a clock (synthetic) or ffmpeg's files.

Both answer the same three questions, so the HTTP side does not know which mode runs:
the master playlist of a stream, the current media playlist of a rendition, and a
segment by sequence number (None when it does not exist now).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from livecdn.config import OriginConfig, Rendition
from livecdn.origin import encoder as enc
from livecdn.origin.synthetic import SegmentCache, etag_of
from livecdn.origin.timeline import H264_AAC_CODECS, Timeline, master_playlist, media_playlist

__all__ = ["Body", "Source", "SyntheticSource", "FfmpegSource", "RETAIN", "PLAYLIST", "SEGMENT"]

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


class Source(Protocol):
    renditions: tuple[Rendition, ...]

    async def start(self) -> None: ...
    async def stop(self, timeout: float) -> None: ...
    def healthy(self) -> bool: ...
    def master(self, stream: str) -> Body: ...
    async def media(self, stream: str, rendition: str) -> Body | None: ...
    async def segment(self, stream: str, rendition: str, seq: int) -> Body | None: ...


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
                            enc.tone_for(i))
            self._encoders[stream] = e
            await e.start()
        # Ready means playable: every rendition has published its first segment.
        ready_timeout = 3 * self.config.target_duration + 20
        await asyncio.gather(*(e.wait_ready(ready_timeout) for e in self._encoders.values()))

    async def stop(self, timeout: float) -> None:
        encoders, self._encoders = list(self._encoders.values()), {}
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

    async def segment(self, stream: str, rendition: str, seq: int) -> Body | None:
        # Only complete segments have this name: ffmpeg writes seg<N>.ts.tmp, then renames.
        got = await self._file(self._dir(stream, rendition) / f"seg{seq}.ts")
        if got is None:
            return None
        data, st = got
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        return Body(data, SEGMENT, SEGMENT_MAX_AGE, etag, st.st_mtime)
