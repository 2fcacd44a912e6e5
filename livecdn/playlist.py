"""What a playlist body says about its own freshness (HLS, with a little DASH).

Pure functions over bytes: the engine calls them once per playlist fill, never
on a hit. A body that is not a playlist raises `MalformedPlaylist`, so a broken
packager answer is treated as an upstream failure instead of being cached and
handed to players.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import m3u8

from .media import Kind

__all__ = ["MalformedPlaylist", "PlaylistInfo", "analyze"]

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
