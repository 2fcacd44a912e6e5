"""Cache keys: what makes two requests the same object.

A key is the normalized path plus, for playlists, the LL-HLS delivery
directives that select a different object (`_HLS_msn`, `_HLS_part`,
`_HLS_skip`), checked and sorted. Everything
else in the query (auth tokens, cache busters) is left out, so it can neither
split the cache nor reach the origin. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode

__all__ = ["BadRequest", "CacheKey", "MAX_PATH_BYTES", "cache_key", "KEPT_QUERY"]

KEPT_QUERY = frozenset({"_HLS_msn", "_HLS_part", "_HLS_skip"})
# A media path longer than this is not a name any packager writes; refusing it
# early bounds the work (and the key size) per request.
MAX_PATH_BYTES = 2048


class BadRequest(Exception):
    """A request refused before any upstream fetch; carries the status (and headers) to answer with."""

    def __init__(self, reason: str, status: int = 400, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers  # e.g. Retry-After on a 429


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The identity of a cached object and the path+query to ask upstream for it.

    `key` and `directory` are derived once here: every hit reads them.
    """

    path: str  # normalized, percent-encoded
    query: str  # kept parameters only, sorted, encoded ("" when none)
    key: str = field(init=False, compare=False)  # path?query, the storage key
    directory: str = field(init=False, compare=False, repr=False)  # the path up to its last "/"

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.path}?{self.query}" if self.query else self.path)
        object.__setattr__(self, "directory", self.path[:self.path.rfind("/") + 1])

    @property
    def extension(self) -> str:
        name = self.path.rsplit("/", 1)[-1]
        dot = name.rfind(".")
        return name[dot:].lower() if dot > 0 else ""

    def __str__(self) -> str:
        return self.key


def cache_key(raw_path: str) -> CacheKey:
    """Normalize a request target into a cache key.

    Args:
        raw_path: the request target as sent, e.g. ``/live/a/seg1.ts?token=x``.

    Returns:
        The key: percent-decoding and re-encoding make ``%61.ts`` and ``a.ts``
        one object; repeated slashes and ``.`` segments collapse.

    Raises:
        BadRequest: the target is not an absolute path, is too long, is not
            valid UTF-8 once decoded, holds control characters or an encoded
            slash, or climbs out of the root with ``..``.
    """
    if len(raw_path) > MAX_PATH_BYTES:
        raise BadRequest(f"path longer than {MAX_PATH_BYTES} bytes", 414)
    path, _, query = raw_path.partition("?")
    if not path.startswith("/"):
        raise BadRequest("request target must be an absolute path")
    if "%2f" in path.lower() or "%5c" in path.lower():
        raise BadRequest("encoded slash in path")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded) or "\\" in decoded:
        raise BadRequest("control character or backslash in path")
    parts: list[str] = []
    for seg in decoded.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            raise BadRequest("'..' in path")
        parts.append(seg)
    if not parts:
        raise BadRequest("empty path", 404)
    normalized = "/" + "/".join(quote(p, safe="!$&'()*+,;=:@-._~") for p in parts)
    kept: dict[str, str] = {}
    if normalized.endswith(".m3u8"):  # LL-HLS directives only select playlist versions
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in KEPT_QUERY:
                continue
            if name in kept:
                raise BadRequest(f"{name} given twice")
            if not _VALID_DIRECTIVE[name](value):
                raise BadRequest(f"bad {name} value {value[:32]!r}")
            kept[name] = value
    return CacheKey(normalized, urlencode(sorted(kept.items())))


# Every distinct directive value is a distinct key that reaches the origin, so
# only values a player can mean are accepted (RFC 8216bis 6.2.5.1).
_VALID_DIRECTIVE = {
    "_HLS_msn": lambda v: v.isdigit() and len(v) <= 12,
    "_HLS_part": lambda v: v.isdigit() and len(v) <= 6,
    "_HLS_skip": lambda v: v in ("YES", "v2"),
}
