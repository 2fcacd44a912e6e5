"""What kind of object a name is, and the Content-Type players expect for it."""

from __future__ import annotations

import enum

__all__ = ["Kind", "CONTENT_TYPES", "kind_of", "PLAYLIST_EXTENSIONS"]

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
    ".vtt": "text/vtt",
    ".webvtt": "text/vtt",
    ".key": "application/octet-stream",
    ".cmfv": "video/mp4",
    ".cmfa": "audio/mp4",
}
PLAYLIST_EXTENSIONS = frozenset({".m3u8", ".m3u", ".mpd"})


class Kind(enum.Enum):
    """Freshness classes: how long an object of this kind stays the same."""

    PLAYLIST = "playlist"  # refined to master/live/ended once the body is read
    MASTER = "master"
    LIVE = "live"
    ENDED = "ended"
    MEDIA = "media"  # segments, parts, init sections: immutable once written
    OTHER = "other"


def kind_of(extension: str) -> Kind:
    if extension in PLAYLIST_EXTENSIONS:
        return Kind.PLAYLIST
    if extension in CONTENT_TYPES:
        return Kind.MEDIA
    return Kind.OTHER
