"""What a playlist body says about its own freshness (HLS, with a little DASH).

Pure functions over bytes: the engine calls them once per playlist fill, never
on a hit. A body that is not a playlist raises `MalformedPlaylist`, so a broken
packager answer is treated as an upstream failure instead of being cached and
handed to players.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import m3u8

from livecdn.cache.keys import BadRequest, cache_key
from livecdn.media.kinds import Kind

__all__ = ["Announced", "MalformedPlaylist", "PlaylistInfo", "analyze", "announced"]

# Playlists are small text files; a "playlist" larger than this is not one,
# and parsing it would cost the event loop real time.
MAX_PLAYLIST_BYTES = 4 << 20


class MalformedPlaylist(ValueError):
    """An upstream answered a playlist name with something that is not a playlist."""


@dataclass(frozen=True, slots=True)
class PlaylistInfo:
    kind: Kind  # MASTER, LIVE or ENDED
    target_duration: float | None = None  # seconds; media playlists only
    part_target: float | None = None  # LL-HLS part target, when announced


def analyze(extension: str, body: bytes) -> PlaylistInfo:
    """Classify a playlist body.

    Raises:
        MalformedPlaylist: with the reason, for anything a player could not use.
    """
    if len(body) > MAX_PLAYLIST_BYTES:
        raise MalformedPlaylist(f"playlist larger than {MAX_PLAYLIST_BYTES} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedPlaylist("playlist is not UTF-8 text") from None
    if extension == ".mpd":
        return _analyze_mpd(text)
    if not text.lstrip().startswith("#EXTM3U"):
        raise MalformedPlaylist("playlist does not start with #EXTM3U")
    try:
        parsed = m3u8.loads(text)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise MalformedPlaylist(f"unparsable playlist: {e}") from None
    if parsed.is_variant:
        return PlaylistInfo(Kind.MASTER)
    if parsed.target_duration is None:
        raise MalformedPlaylist("media playlist without #EXT-X-TARGETDURATION")
    target = float(parsed.target_duration)
    if target <= 0:
        raise MalformedPlaylist(f"target duration {target} is not positive")
    part = float(parsed.part_inf.part_target) if parsed.part_inf and parsed.part_inf.part_target else None
    return PlaylistInfo(Kind.ENDED if parsed.is_endlist else Kind.LIVE, target, part)


_MPD_TYPE = re.compile(r"<MPD\b[^>]*\btype\s*=\s*[\"'](static|dynamic)[\"']", re.S)
_MPD_UPDATE = re.compile(r"\bminimumUpdatePeriod\s*=\s*[\"']PT(\d+(?:\.\d+)?)S[\"']")


def _analyze_mpd(text: str) -> PlaylistInfo:
    if "<MPD" not in text:
        raise MalformedPlaylist("manifest has no <MPD> element")
    m = _MPD_TYPE.search(text)
    if m is None or m.group(1) == "static":
        return PlaylistInfo(Kind.ENDED)
    update = _MPD_UPDATE.search(text)
    return PlaylistInfo(Kind.LIVE, float(update.group(1)) if update else 2.0)


@dataclass(frozen=True, slots=True)
class Announced:
    """The names an HLS playlist says exist, as normalized absolute paths."""

    names: tuple[str, ...]  # every name: segments, parts, init sections, hints, child playlists, keys
    segments: tuple[str, ...]  # full segments in playlist order (what prefetch follows)
    hints: tuple[str, ...]  # preload hints: objects about to exist
    live: bool  # a media playlist without ENDLIST


def announced(path: str, body: bytes) -> Announced:
    """What a playlist at `path` announces (names on other hosts are left out).

    Raises:
        MalformedPlaylist: the body is not an HLS playlist.
    """
    try:
        parsed = m3u8.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise MalformedPlaylist(f"unparsable playlist: {e}") from None
    base = "http://playlist.invalid" + path

    def resolve(uris: list[str | None]) -> list[str]:
        out = []
        for uri in uris:
            if not uri:
                continue
            target = urlsplit(urljoin(base, uri))
            if target.netloc != "playlist.invalid":
                continue
            try:
                out.append(cache_key(target.path).path)
            except BadRequest:
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
