"""The live timeline of the built-in origin: which segments exist at a time, and the playlists.

Pure: no sockets, no clock. Every question takes `now` (seconds, the same clock as
`start`), so tests can walk a stream through time with plain numbers.

A live packager makes segment N during [start + N*T, start + (N+1)*T) and publishes it
when it is complete, at `start + (N+1)*T`. Its media playlist lists the newest
`window` published segments; like real packagers, it keeps `retain` more on disk past
the window so a player that fetched the playlist just before the window slid can
still get what the playlist announced. Older ones are gone (404).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated

from livecdn.config.schema import Checked, Min, Rendition, TargetDuration, Window

__all__ = [
    "Timeline",
    "master_playlist",
    "media_playlist",
    "segment_uri",
    "parse_segment_uri",
    "H264_AAC_CODECS",
]

#: CODECS of what the ffmpeg mode encodes: H.264 Constrained Baseline level 3.1, AAC-LC.
H264_AAC_CODECS = "avc1.42c01f,mp4a.40.2"

_MAX_SEQ_DIGITS = 18  # far beyond any real stream, small enough to stay a cheap int


def segment_uri(seq: int) -> str:
    """The name of segment `seq`, relative to its media playlist."""
    return f"seg{seq}.ts"


def parse_segment_uri(name: str) -> int | None:
    """`seg12.ts` → 12; None for anything that is not a canonical segment name.

    Canonical only (no sign, no leading zeros, bounded length), so one segment has one
    name and one cache key.
    """
    if not (name.startswith("seg") and name.endswith(".ts")):
        return None
    digits = name[3:-3]
    if not digits or len(digits) > _MAX_SEQ_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    if digits != "0" and digits.startswith("0"):
        return None
    return int(digits)


@dataclass(frozen=True)
class Timeline(Checked):
    """The segment schedule of one live stream (all renditions share it).

    Its bounds are the origin config's own declarations (`TargetDuration`,
    `Window`), checked by the schema's one checker when a timeline is built.
    """

    start: float
    target_duration: TargetDuration
    window: Window
    retain: Annotated[int, Min(0)] = 2

    def produced(self, now: float) -> int:
        """How many segments have been published by `now` (segments 0 .. produced-1)."""
        if now < self.start:
            return 0
        # A tiny epsilon so that `published_at(n)` itself counts as published despite
        # float rounding in (start + (n+1)*T - start) / T.
        return max(0, math.floor((now - self.start) / self.target_duration + 1e-9))

    def published_at(self, seq: int) -> float:
        """When segment `seq` becomes available."""
        return self.start + (seq + 1) * self.target_duration

    def in_playlist(self, now: float) -> range:
        """Sequence numbers the media playlist lists at `now` (empty before the first one)."""
        n = self.produced(now)
        return range(max(0, n - self.window), n)

    def available(self, now: float) -> range:
        """Sequence numbers that can be fetched at `now`: the window plus `retain` older."""
        n = self.produced(now)
        return range(max(0, n - self.window - self.retain), n)

    def is_available(self, seq: int, now: float) -> bool:
        return seq in self.available(now)


def _target_duration_tag(target_duration: float) -> int:
    # EXT-X-TARGETDURATION is an integer that no EXTINF may exceed once rounded (RFC 8216 4.3.3.1).
    return max(1, math.ceil(target_duration - 1e-9))


def media_playlist(timeline: Timeline, now: float,
                   uri: Callable[[int], str] = segment_uri) -> str | None:
    """The live media playlist at `now`; None before the first segment is published.

    No EXT-X-ENDLIST: the stream never ends while the origin runs.
    """
    seqs = timeline.in_playlist(now)
    if not seqs:
        return None
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{_target_duration_tag(timeline.target_duration)}",
        f"#EXT-X-MEDIA-SEQUENCE:{seqs[0]}",
    ]
    for seq in seqs:
        lines.append(f"#EXTINF:{timeline.target_duration:.3f},")
        lines.append(uri(seq))
    return "\n".join(lines) + "\n"


def master_playlist(renditions: Iterable[Rendition], codecs: str | None = None,
                    uri: Callable[[Rendition], str] = lambda r: f"{r.name}/index.m3u8") -> str:
    """The master playlist: one variant per rendition, best first as players expect."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in sorted(renditions, key=lambda r: r.bandwidth, reverse=True):
        attrs = [f"BANDWIDTH={r.bandwidth}", f"RESOLUTION={r.width}x{r.height}"]
        if codecs:
            attrs.append(f'CODECS="{codecs}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(uri(r))
    return "\n".join(lines) + "\n"
