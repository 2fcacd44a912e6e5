"""What kind of object a name is, what kind of playlist a body is, and the Content-Type players expect.

Two questions, two enums. `NameKind` is known from the name alone, before any
byte arrives: it decides whether a fill holds the body to check it whole
(playlists) or streams it (everything else). `ManifestKind` is known only once
a playlist's body has been read (`livecdn.media.playlist.read`): it decides how
long that playlist stays fresh.
"""

from __future__ import annotations

import enum

__all__ = [
    "CHANGING", "CONTENT_TYPES", "HLS_PLAYLISTS", "PLAYLISTS", "ManifestKind", "NameKind", "is_hls_playlist",
    "is_playlist", "kind_of",
]

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m3u": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".cmfv": "video/mp4",
    ".cmfa": "audio/mp4",
    ".cmft": "application/mp4",  # CMAF text track (subtitles in ISO BMFF)
    # Subtitles: WebVTT segments of a live stream, sidecar files of a recording.
    ".vtt": "text/vtt",
    ".webvtt": "text/vtt",
    ".srt": "application/x-subrip",
    ".ttml": "application/ttml+xml",
    ".dfxp": "application/ttml+xml",
    ".key": "application/octet-stream",  # AES-128 / SAMPLE-AES keys named by EXT-X-KEY
    # Thumbnails (image playlists, trick play) and metadata (EXT-X-SESSION-DATA).
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".json": "application/json",
}
# Served, but not immutable: thumbnails ("latest frame" images, sprite sheets)
# and JSON metadata are rewritten under the same name, so they live `other_ttl`
# rather than forever. Keys and subtitle files are immutable like segments: a
# packager names a new key or a new cue file anew.
CHANGING = frozenset({".jpg", ".jpeg", ".png", ".webp", ".avif", ".json"})
# Extensions of playlist names (lower-cased): HLS, and HLS or DASH. Sets, so
# that a per-request check is a membership test rather than a call.
HLS_PLAYLISTS = frozenset({".m3u8", ".m3u"})
PLAYLISTS = HLS_PLAYLISTS | {".mpd"}


class NameKind(enum.Enum):
    """What a name says an object is."""

    PLAYLIST = "playlist"  # HLS or DASH: checked whole, fresh for as long as its body says
    MEDIA = "media"  # segments, parts, init sections, keys, subtitles: immutable once written
    OTHER = "other"  # thumbnails, JSON, names of no known type: may change under the same name


class ManifestKind(enum.Enum):
    """What a playlist's body says it is: how long it stays the same."""

    MASTER = "master"  # a variant list: changes rarely
    LIVE = "live"  # a media playlist still growing
    ENDED = "ended"  # ENDLIST (or a static MPD): never changes again


def is_playlist(extension: str) -> bool:
    """Does a name with this (lower-cased) extension hold a playlist, HLS or DASH?"""
    return extension in PLAYLISTS


def is_hls_playlist(extension: str) -> bool:
    """An HLS playlist: the one kind whose names are read and whose LL-HLS directives count."""
    return extension in HLS_PLAYLISTS


def kind_of(extension: str) -> NameKind:
    if extension in PLAYLISTS:
        return NameKind.PLAYLIST
    if extension in CONTENT_TYPES and extension not in CHANGING:
        return NameKind.MEDIA
    return NameKind.OTHER
