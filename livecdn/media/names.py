"""Media names: one spelling per object path, and the parts of a path the rest reads.

A request target and a URI a playlist announces name the same object only if
they normalize to the same path, so both go through `normalize`: the cache key
(`livecdn.cache.keys`) and the playlist reader (`livecdn.media.playlist`) use it.
Pure functions, no I/O.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

__all__ = ["BadName", "MAX_PATH_BYTES", "directory", "extension", "normalize"]

# A media path longer than this is not a name any packager writes; refusing it
# early bounds the work (and the key size) per request.
MAX_PATH_BYTES = 2048
# Characters left as they are when a decoded segment is encoded again (RFC 3986
# pchar minus "%"): one encoding per name.
_SAFE = "!$&'()*+,;=:@-._~"


class BadName(ValueError):
    """A path that cannot name a media object; carries the HTTP status a request for it gets."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def normalize(path: str) -> str:
    """The one spelling of an absolute path.

    Args:
        path: the path part of a request target or of a resolved URI, e.g. ``/live//%61.ts``.

    Returns:
        The normalized path: percent-decoding and re-encoding make ``%61.ts``
        and ``a.ts`` one name; repeated slashes and ``.`` segments collapse.

    Raises:
        BadName: the path is not absolute, is too long, is not valid UTF-8 once
            decoded, holds control characters or an encoded slash, climbs out
            of the root with ``..`` (400), or names nothing (404); 414 when too long.
    """
    if len(path) > MAX_PATH_BYTES:
        raise BadName(f"path longer than {MAX_PATH_BYTES} bytes", 414)
    if not path.startswith("/"):
        raise BadName("request target must be an absolute path")
    if "%2f" in path.lower() or "%5c" in path.lower():
        raise BadName("encoded slash in path")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadName("path is not valid UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded) or "\\" in decoded:
        raise BadName("control character or backslash in path")
    parts: list[str] = []
    for seg in decoded.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            raise BadName("'..' in path")
        parts.append(seg)
    if not parts:
        raise BadName("empty path", 404)
    return "/" + "/".join(quote(p, safe=_SAFE) for p in parts)


def directory(path: str) -> str:
    """The path up to and including its last "/": the stream a name belongs to."""
    return path[:path.rfind("/") + 1]


def extension(path: str) -> str:
    """The name's extension, lower-cased (``".m3u8"``); "" when the name has none."""
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""
