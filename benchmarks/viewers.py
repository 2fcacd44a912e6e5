"""Simulated HLS viewers: many players following one live stream through a CDN.

Each viewer behaves like hls.js on a live stream: it fetches the master
playlist, picks a rendition, starts three segments behind the live edge,
reloads the media playlist once per target duration (half of one when the
playlist did not change) and fetches every new segment once, in order.

A viewer models its player buffer: playback starts once 2 segments are in,
each segment adds its duration, playback consumes wall-clock time. A *stall*
is the buffer running dry before the next needed segment arrived; stall time
is how long it stayed dry (a stall still open at the end counts too).

Each viewer connects from its own loopback address (`--source 127.101` gives
127.101.0.1, 127.101.0.2, ...), as distinct players would, so an edge's
per-client limits see 200 clients rather than one.

A driver running viewers in its own process can watch every request
(`simulate(..., on_request=)`: URL, start, end, status, X-Cache) and every
stall (`on_stall=`: which viewer, dry since, refilled at), and end the run
early (`stop=`).

Run standalone, it prints one JSON line of results:

    viewers.py http://127.0.0.1:8080/live/master.m3u8 --viewers 200 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urljoin

import aiohttp
import uvloop

START_SEGMENTS = 2  # segments buffered before playback starts
LIVE_SYNC_SEGMENTS = 3  # hls.js liveSyncDurationCount: start this many segments behind the edge
REQUEST_TIMEOUT = 10.0
LAG_TICK = 0.05

__all__ = ["LIVE_SYNC_SEGMENTS", "Buffer", "FetchFailed", "Request", "Stats", "Viewer",
           "client_address", "parse_master", "parse_media", "part_ready_probe", "percentile", "preload_hint",
           "simulate", "watch_loop_lag"]


class Request(NamedTuple):
    """One viewer request as it went: what, when (monotonic), and the answer's status (0: failed) and X-Cache."""

    url: str
    start: float
    end: float
    status: int
    x_cache: str


OnRequest = Callable[[Request], None]
OnStall = Callable[[int, float, float], None]  # viewer, dry since, refilled at (monotonic)


def client_address(prefix: str, i: int) -> str:
    """The `i`-th loopback address under `prefix` (two octets, e.g. "127.101")."""
    return f"{prefix}.{i // 250}.{i % 250 + 1}"


class FetchFailed(Exception):
    """A request failed or answered something other than 200."""


@dataclass
class Buffer:
    """A player's playback buffer, in media seconds against wall-clock time."""

    buffered: float = 0.0  # media seconds received
    segments: int = 0
    anchor: float | None = None  # wall-clock time of media position 0, shifted by stalls
    stalls: int = 0
    stall_seconds: float = 0.0
    on_stall: Callable[[float, float], None] | None = None  # told each stall: dry since, refilled at

    def _settle(self, now: float) -> None:
        """Account a stall if the playhead reached the end of the buffer before `now`."""
        if self.anchor is None:
            return
        dry = self.anchor + self.buffered
        if now > dry:
            self.stalls += 1
            self.stall_seconds += now - dry
            self.anchor += now - dry
            if self.on_stall is not None:
                self.on_stall(dry, now)

    def add(self, duration: float, now: float) -> None:
        """A segment of `duration` seconds arrived at `now`."""
        self._settle(now)
        self.buffered += duration
        self.segments += 1
        if self.anchor is None and self.segments >= START_SEGMENTS:
            self.anchor = now

    def finish(self, now: float) -> None:
        """The run ended: a buffer already dry is one more stall."""
        self._settle(now)


@dataclass
class Playlist:
    """What a viewer needs of a media playlist."""

    target: float
    sequence: int  # media sequence of the first segment
    segments: list[tuple[str, float]]  # (absolute URL, duration)


def parse_master(text: str, base: str) -> list[str]:
    """Absolute URLs of the variant playlists of a master playlist."""
    lines = [line.strip() for line in text.splitlines()]
    return [urljoin(base, lines[i + 1]) for i, line in enumerate(lines[:-1])
            if line.startswith("#EXT-X-STREAM-INF")]


def parse_media(text: str, base: str) -> Playlist:
    """Target duration, media sequence and segments of a media playlist."""
    target, sequence, duration = 0.0, 0, 0.0
    segments: list[tuple[str, float]] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line and not line.startswith("#"):
            segments.append((urljoin(base, line), duration))
    return Playlist(target, sequence, segments)


@dataclass
class Stats:
    """Everything one process's viewers measured."""

    segment_ms: list[float] = field(default_factory=list)
    playlist_loads: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, e: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(e).__name__}: {e}"[:200])


class Viewer:
    """One simulated player."""

    def __init__(self, session: aiohttp.ClientSession, master: str, choice: int, stats: Stats,
                 on_request: OnRequest | None = None, on_stall: OnStall | None = None) -> None:
        self.session = session
        self.master = master
        self.choice = choice
        self.stats = stats
        self.on_request = on_request
        self.buffer = Buffer(on_stall=None if on_stall is None else lambda dry, now: on_stall(choice, dry, now))
        self.queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def _get(self, url: str) -> bytes:
        started = time.monotonic()
        try:
            async with self.session.get(url) as resp:
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            if self.on_request is not None:
                self.on_request(Request(url, started, time.monotonic(), 0, ""))
            raise FetchFailed(f"{url}: {e!r}") from e
        if self.on_request is not None:
            self.on_request(Request(url, started, time.monotonic(), resp.status, resp.headers.get("X-Cache", "")))
        if resp.status != 200:
            raise FetchFailed(f"{url}: status {resp.status}")
        return body

    async def run(self) -> None:
        """Play until cancelled."""
        variants = parse_master((await self._get(self.master)).decode(), self.master)
        media = variants[self.choice % len(variants)]
        fetcher = asyncio.create_task(self._fetch_segments())
        try:
            await self._follow(media)
        finally:
            fetcher.cancel()

    async def _follow(self, media: str) -> None:
        """Reload the playlist like hls.js and queue each new segment once."""
        next_seq: int | None = None
        while True:
            started = time.monotonic()
            try:
                playlist = parse_media((await self._get(media)).decode(), media)
            except FetchFailed as e:
                self.stats.error(e)
                await asyncio.sleep(1.0)
                continue
            self.stats.playlist_loads += 1
            last = playlist.sequence + len(playlist.segments)
            if next_seq is None:
                next_seq = max(playlist.sequence, last - LIVE_SYNC_SEGMENTS)
            updated = last > next_seq
            for seq in range(max(next_seq, playlist.sequence), last):
                self.queue.put_nowait(playlist.segments[seq - playlist.sequence])
            next_seq = max(next_seq, last)
            wait = playlist.target if updated else playlist.target / 2
            await asyncio.sleep(max(0.0, started + wait - time.monotonic()))

    async def _fetch_segments(self) -> None:
        while True:
            url, duration = await self.queue.get()
            while True:
                started = time.monotonic()
                try:
                    await self._get(url)
                    break
                except FetchFailed as e:
                    self.stats.error(e)
                    await asyncio.sleep(0.5)
            now = time.monotonic()
            self.stats.segment_ms.append((now - started) * 1000)
            self.buffer.add(duration, now)


_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]*?seg(\d+)\.(\d+)\.ts)"')


def preload_hint(text: str) -> tuple[str, int, int] | None:
    """(URI, msn, part) of an LL-HLS playlist's part preload hint (the built-in origin's part names)."""
    m = _HINT.search(text)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


async def part_ready_probe(session: aiohttp.ClientSession, media: str, ready: dict[str, float],
                           stop: asyncio.Event) -> None:
    """At the origin itself: when each part ("msn.part") became ready, told by blocking reloads held there."""
    async with session.get(media) as r:
        hint = preload_hint(await r.text())
    while hint is not None and not stop.is_set():
        _, msn, part = hint
        async with session.get(f"{media}?_HLS_msn={msn}&_HLS_part={part}") as r:
            text = await r.text()
        ready[f"{msn}.{part}"] = time.monotonic()
        hint = preload_hint(text)


async def watch_loop_lag(record: Callable[[float, float], None]) -> None:
    """Tell `record` (when, ms late) how late the event loop wakes up from a short sleep, until cancelled."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(LAG_TICK)
        now = time.monotonic()
        record(now, (now - t - LAG_TICK) * 1000)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def simulate(master: str, viewers: int, duration: float, ramp: float, seed: int, source: str, *,
                   on_request: OnRequest | None = None, on_stall: OnStall | None = None,
                   stop: asyncio.Event | None = None) -> dict[str, object]:
    """Run `viewers` players for `duration` seconds, or until `stop` is set (joining over `ramp` seconds)."""
    rng = random.Random(seed)
    stats = Stats()
    lag: list[float] = []
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(client_address(source, i), 0)),
                                      timeout=timeout) for i in range(viewers)]
    players = [Viewer(session, master, i, stats, on_request, on_stall) for i, session in enumerate(sessions)]

    async def join(v: Viewer, delay: float) -> None:
        await asyncio.sleep(delay)
        await v.run()

    lag_task = asyncio.create_task(watch_loop_lag(lambda _when, ms: lag.append(ms)))
    tasks = [asyncio.create_task(join(v, rng.uniform(0, ramp))) for v in players]
    # The run ends when every viewer has ended (only one that cannot start does), at `duration`, or at `stop`.
    ends = [asyncio.create_task(asyncio.wait(tasks)), *([asyncio.create_task(stop.wait())] if stop else [])]
    try:
        await asyncio.wait(ends, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        end = time.monotonic()
        done = [t for t in tasks if t.done()]
    finally:
        for t in [*tasks, *ends, lag_task]:
            t.cancel()
        await asyncio.gather(*tasks, *ends, lag_task, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sessions))
    for t in done:  # a viewer ends early only if it could not even start
        if not t.cancelled() and t.exception() is not None:
            stats.error(t.exception())  # type: ignore[arg-type]
    for v in players:
        v.buffer.finish(end)
    return {
        "viewers": viewers,
        "playing": sum(v.buffer.anchor is not None for v in players),
        "segments": len(stats.segment_ms),
        "playlist_loads": stats.playlist_loads,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "stalls": sum(v.buffer.stalls for v in players),
        "stall_seconds": round(sum(v.buffer.stall_seconds for v in players), 3),
        "stalled_viewers": sum(v.buffer.stalls > 0 for v in players),
        "segment_ms": [round(x, 2) for x in stats.segment_ms],
        "loop_lag_ms": {"p50": round(statistics.median(lag), 2) if lag else 0.0,
                        "p99": round(percentile(lag, 99), 2), "max": round(max(lag, default=0.0), 2)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description="Simulated HLS viewers following a live stream.")
    p.add_argument("master", help="master playlist URL")
    p.add_argument("--viewers", type=int, default=200)
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    p.add_argument("--ramp", type=float, default=2.0, help="viewers join over this many seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--source", default="127.101", help="viewers connect from PREFIX.0.1, PREFIX.0.2, ...")
    args = p.parse_args()
    # uvloop, as the nodes use: the load generator's own overhead kept low.
    result = uvloop.run(simulate(args.master, args.viewers, args.duration, args.ramp, args.seed, args.source))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
