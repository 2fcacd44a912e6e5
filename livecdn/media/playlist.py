"""What a playlist body says: its own freshness and the names it announces.

`read` is the one parse of a playlist body (HLS with `m3u8`, DASH with `livecdn.media.mpd`):
the cache's fill calls it once, when the body has arrived whole, and the
resulting `Manifest` travels with the stored object to whoever needs it
(freshness, revalidation, the edge's guard and prefetch), so no one parses
the same bytes again. A body that is not a playlist raises
`MalformedPlaylist`, so a broken packager answer is treated as an upstream
failure instead of being cached and handed to players.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import m3u8

from livecdn.media.kinds import ManifestKind
from livecdn.media.names import BadName, extension, normalize

__all__ = ["Announced", "MAX_PLAYLIST_BYTES", "MalformedPlaylist", "Manifest", "PlaylistInfo", "Run", "read"]

# Playlists are small text files; a "playlist" larger than this is not one,
# and parsing it would cost the event loop real time.
MAX_PLAYLIST_BYTES = 4 << 20
# Any host will do: relative URIs are resolved against it, and a URI that
# comes back on another host names an object of another origin (left out).
_HOST = "playlist.invalid"


class MalformedPlaylist(ValueError):
    """An upstream answered a playlist name with something that is not a playlist."""


@dataclass(frozen=True, slots=True)
class PlaylistInfo:
    """What a playlist says about its own freshness."""

    kind: ManifestKind
    target_duration: float | None = None  # seconds; media playlists only
    part_target: float | None = None  # LL-HLS part target, when announced


@dataclass(frozen=True, slots=True)
class Announced:
    """The names a playlist (HLS or DASH) says exist, as normalized absolute paths."""

    names: tuple[str, ...]  # every name: segments, parts, init sections, hints, child playlists, keys
    segments: tuple[str, ...]  # full segments in playlist order (what prefetch follows)
    hints: tuple[str, ...]  # preload hints: objects about to exist
    live: bool  # a media playlist without ENDLIST


@dataclass(frozen=True, slots=True)
class Run:
    """What tells one encoder run of a stream from the next: compared between two reads of one playlist.

    Every field is None where the playlist does not say it.
    """

    media_sequence: int | None = None  # HLS media playlists: EXT-X-MEDIA-SEQUENCE (0 when absent)
    discontinuity_sequence: int | None = None  # HLS: EXT-X-DISCONTINUITY-SEQUENCE (0 when absent)
    newest_pdt: float | None = None  # HLS: the last segment's EXT-X-PROGRAM-DATE-TIME, epoch seconds
    started: str | None = None  # DASH: the MPD's availabilityStartTime, as written


@dataclass(frozen=True, slots=True)
class Manifest:
    """One read of a playlist body."""

    info: PlaylistInfo
    # None where names are not read, which is not the same as a playlist
    # that announces nothing so far (livecdn.media.mpd reads DASH's).
    announced: Announced | None
    run: Run = Run()


def read(path: str, body: bytes, at: float | None = None) -> Manifest:
    """Read a playlist body once: its freshness and what it announces.

    Args:
        path: the playlist's normalized path; its extension says HLS or DASH,
            and its relative URIs resolve against it.
        body: the whole body.
        at: when it was fetched (epoch seconds); needed for DASH, whose
            template names are known from the clock.

    Raises:
        MalformedPlaylist: with the reason, for anything a player could not use.
    """
    if len(body) > MAX_PLAYLIST_BYTES:
        raise MalformedPlaylist(f"playlist larger than {MAX_PLAYLIST_BYTES} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedPlaylist("playlist is not UTF-8 text") from None
    if extension(path) == ".mpd":
        from livecdn.media import mpd  # here: mpd.py builds on this module's types

        if at is None:
            raise TypeError("reading an MPD needs the time it was fetched (at)")
        return mpd.read(path, text, at)
    if not text.lstrip().startswith("#EXTM3U"):
        raise MalformedPlaylist("playlist does not start with #EXTM3U")
    try:
        parsed = m3u8.loads(text)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise MalformedPlaylist(f"unparsable playlist: {e}") from None
    return Manifest(_hls_info(parsed), _announced(path, parsed), _hls_run(parsed))


def _hls_info(parsed: m3u8.M3U8) -> PlaylistInfo:
    if parsed.is_variant:
        return PlaylistInfo(ManifestKind.MASTER)
    if parsed.target_duration is None:
        raise MalformedPlaylist("media playlist without #EXT-X-TARGETDURATION")
    target = float(parsed.target_duration)
    if target <= 0:
        raise MalformedPlaylist(f"target duration {target} is not positive")
    part = float(parsed.part_inf.part_target) if parsed.part_inf and parsed.part_inf.part_target else None
    return PlaylistInfo(ManifestKind.ENDED if parsed.is_endlist else ManifestKind.LIVE, target, part)


def _hls_run(parsed: m3u8.M3U8) -> Run:
    if parsed.is_variant:
        return Run()
    newest = parsed.segments[-1].current_program_date_time if parsed.segments else None
    return Run(parsed.media_sequence or 0, parsed.discontinuity_sequence or 0,
               newest.timestamp() if newest is not None else None)


def _announced(path: str, parsed: m3u8.M3U8) -> Announced:
    """What a playlist at `path` announces (names on other hosts, and names no request could use, are left out)."""
    base = f"http://{_HOST}{path}"

    def resolve(uris: list[str | None]) -> list[str]:
        out = []
        for uri in uris:
            if not uri:
                continue
            target = urlsplit(urljoin(base, uri))
            if target.netloc != _HOST:
                continue
            try:
                out.append(normalize(target.path))
            except BadName:
                continue
        return out

    segments = resolve([seg.uri for seg in parsed.segments])
    hints = resolve([parsed.preload_hint.uri] if parsed.preload_hint else [])
    others = resolve(
        [part.uri for seg in parsed.segments for part in seg.parts]
        + [m.uri for m in parsed.segment_map]
        + [k.uri for k in parsed.keys if k is not None]
        + [r.uri for r in parsed.rendition_reports]
        + [p.uri for p in parsed.playlists]
        + [m.uri for m in parsed.media]
        + [p.uri for p in parsed.iframe_playlists]
    )
    live = not parsed.is_variant and not parsed.is_endlist
    return Announced(tuple(dict.fromkeys(segments + hints + others)), tuple(segments), tuple(hints), live)

