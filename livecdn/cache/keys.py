"""Cache keys: what makes two requests the same object.

A key is the origin the request is routed to (its identity: name and a hash
of where it is), the normalized path (`livecdn.media.names`) plus, for HLS
playlists, the LL-HLS delivery directives that select a different object
(`_HLS_msn`, `_HLS_part`, `_HLS_skip`), checked and sorted. Everything
else in the query (auth tokens, cache busters) is left out, so it can neither
split the cache nor reach the origin. Request headers enter a key only where
the origin's `Vary` named them (`CacheKey.varied`); those are then the headers
forwarded upstream. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from livecdn.config.schema import OriginRoute
from livecdn.media.kinds import is_hls_playlist
from livecdn.media.names import MAX_PATH_BYTES, BadName, directory, extension, normalize

__all__ = ["ANY", "BadRequest", "CacheKey", "MAX_PATH_BYTES", "cache_key", "KEPT_QUERY", "origin_identity",
           "origin_of", "path_of", "target", "vary_names"]

KEPT_QUERY = frozenset({"_HLS_msn", "_HLS_part", "_HLS_skip"})
# `Vary: *`: no stored answer can ever be reused (RFC 9111 4.1).
ANY = ("*",)
# What separates a variant's header values from the path in a storage key: a
# normalized path is percent-encoded, so it never holds a space.
_VARIANT = " "
# Hex digits of the location hash in an origin identity: it tells apart the
# URLs one origin name had over time; 2^32 of them is plenty.
IDENTITY_HASH_DIGITS = 8


class BadRequest(Exception):
    """A request refused before any upstream fetch; carries the status (and headers) to answer with."""

    def __init__(self, reason: str, status: int = 400, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers  # e.g. Retry-After on a 429


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The identity of a cached object: its origin, and the path+query to ask upstream for it.

    `key`, `directory` and `extension` are derived once here: every hit reads them.
    """

    path: str  # normalized, percent-encoded
    query: str  # kept parameters only, sorted, encoded ("" when none)
    origin: str = ""  # `origin_identity` of the origin it is routed to ("": a bare engine's one upstream)
    # The request's values of the headers the origin's Vary names, by lower-cased name, sorted ("" when absent).
    vary: tuple[tuple[str, str], ...] = ()
    key: str = field(init=False, compare=False)  # origin + path?query, then the variant: the storage key
    directory: str = field(init=False, compare=False, repr=False)  # the path up to its last "/"
    extension: str = field(init=False, compare=False, repr=False)  # lower-cased, "" when none

    def __post_init__(self) -> None:
        key = self.origin + (f"{self.path}?{self.query}" if self.query else self.path)
        if self.vary:
            key += _VARIANT + urlencode(self.vary)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "directory", directory(self.path))
        object.__setattr__(self, "extension", extension(self.path))

    def __str__(self) -> str:
        return self.key

    @property
    def vary_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.vary)

    def varied(self, names: tuple[str, ...], headers: Mapping[bytes, bytes]) -> CacheKey:
        """This object's variant for a request with these headers, the origin varying on `names`.

        Values are compared as sent, but for surrounding and repeated whitespace (RFC 9111 4.1 allows
        normalizing); a header the request lacks is its own variant ("").
        """
        values = tuple((name, " ".join(headers.get(name.encode(), b"").decode("latin-1").split())) for name in names)
        return dataclasses.replace(self, vary=values)


def origin_identity(route: OriginRoute) -> str:
    """`NAME.HASH`: the origin part of its keys; a new URL or Host header is a new identity.

    No '/' in it (names cannot hold one), so a storage key's path starts at its first '/'.
    """
    where = f"{route.url} {route.host_header}".encode()
    return f"{route.name}.{hashlib.sha256(where).hexdigest()[:IDENTITY_HASH_DIGITS]}"


def path_of(key: str) -> str:
    """The normalized path a storage key (`CacheKey.key`) names: what purges and stream restarts select by."""
    return key[key.find("/"):].partition("?")[0].partition(_VARIANT)[0]


def vary_names(value: str | None) -> tuple[str, ...]:
    """The request headers an origin's `Vary` makes part of the key: lower-cased, sorted; `ANY` for `*`.

    Accept-Encoding is left out: livecdn asks for identity and compresses
    playlists itself, varying on it towards players (`livecdn.front.answers`).
    """
    if not value:
        return ()
    names = {part.strip().lower() for part in value.split(",")} - {"", "accept-encoding"}
    return ANY if "*" in names else tuple(sorted(names))


def origin_of(key: str) -> str:
    """The origin identity a storage key (`CacheKey.key`) starts with."""
    return key[:key.find("/")]


def cache_key(raw_path: str, origin: str = "") -> CacheKey:
    """Normalize a request target into a cache key for `origin` (an `origin_identity`)."""
    return CacheKey(*target(raw_path), origin)


def target(raw_path: str) -> tuple[str, str]:
    """Normalize a request target into the path and query of its cache key.

    Args:
        raw_path: the request target as sent, e.g. ``/live/a/seg1.ts?token=x``.

    Returns:
        The path in its one spelling (`livecdn.media.names.normalize`) and,
        for HLS playlists, the LL-HLS directives, checked, sorted and encoded.

    Raises:
        BadRequest: the target is too long, its path cannot name an object
            (`names.normalize` says why, and the status), or a directive is
            repeated or has a value no player sends.
    """
    if len(raw_path) > MAX_PATH_BYTES:  # the whole target: its query is parsed below
        raise BadRequest(f"path longer than {MAX_PATH_BYTES} bytes", 414)
    path, _, query = raw_path.partition("?")
    try:
        normalized = normalize(path)
    except BadName as e:
        raise BadRequest(e.reason, e.status) from None
    kept: dict[str, str] = {}
    if query and is_hls_playlist(extension(normalized)):  # LL-HLS directives only select playlist versions
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in KEPT_QUERY:
                continue
            if name in kept:
                raise BadRequest(f"{name} given twice")
            if not _VALID_DIRECTIVE[name](value):
                raise BadRequest(f"bad {name} value {value[:32]!r}")
            kept[name] = value
        if "_HLS_part" in kept and "_HLS_msn" not in kept:  # RFC 8216bis 6.2.5.2: no playlist can answer it
            raise BadRequest("_HLS_part without _HLS_msn")
    return normalized, urlencode(sorted(kept.items()))


# Every distinct directive value is a distinct key that reaches the origin, so
# only values a player can mean are accepted (RFC 8216bis 6.2.5.1).
_VALID_DIRECTIVE = {
    "_HLS_msn": lambda v: v.isascii() and v.isdigit() and len(v) <= 12,  # not any Unicode digit
    "_HLS_part": lambda v: v.isascii() and v.isdigit() and len(v) <= 6,
    "_HLS_skip": lambda v: v in ("YES", "v2"),
}
