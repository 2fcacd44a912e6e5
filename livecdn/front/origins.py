"""Which origin a request belongs to: the origin part of its cache key.

One CDN fronts several origins (packagers, customers), routed by the
player's Host and/or a path prefix (`OriginRoute`). The chosen origin's
identity (`keys.origin_identity`: its name plus a short hash of its URL and
Host header) leads every storage key, so an object stored for one origin is
never served for another, nor for the same name moved to another URL, in
memory and on disk, across restarts. The player's Host is in the key only
through the origin it selects: it does not split one origin's cache.

A shield serves edges: they name the key's origin in `ORIGIN_HEADER`, and the
shield takes the origin by that identity instead of routing again. Identity
rather than name, so an edge and a shield whose topologies disagree about an
origin's URL refuse to exchange bytes (a 502: the edge tries its next
upstream) rather than store one origin's bytes under another's key.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from livecdn.cache.keys import BadRequest, CacheKey, origin_identity, target
from livecdn.cache.upstreams import ORIGIN_HEADER
from livecdn.config.schema import OriginRoute

from .request import Request

__all__ = ["Origins", "host_of"]

_NAMED = ORIGIN_HEADER.encode()


def host_of(value: bytes | None) -> str | None:
    """A Host field as routing compares it: no port, lower case, no final dot."""
    if value is None:
        return None
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # an IPv6 literal: its colons are not a port
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")


class Origins:
    """The topology's origins as one node routes requests to them.

    Args:
        routes: every origin, exactly one of them the catch-all (the topology checked that).
        named: honour `ORIGIN_HEADER` (a shield: its requests come from edges).
    """

    __slots__ = ("by_identity", "default", "select", "_by_host", "_prefixed", "_named")

    def __init__(self, routes: Iterable[OriginRoute], named: bool = False) -> None:
        routes = tuple(routes)
        self.by_identity = {origin_identity(r): r for r in routes}
        ids = {r.name: i for i, r in self.by_identity.items()}
        self.default = next(ids[r.name] for r in routes if r.catch_all)
        # Host → its origins' (prefix, identity), longest prefix first; prefix-only origins likewise.
        self._by_host: dict[str, list[tuple[str, str]]] = {}
        for r in routes:
            for h in r.hosts:
                self._by_host.setdefault(h, []).append((r.prefix, ids[r.name]))
        for rules in self._by_host.values():
            rules.sort(key=lambda rule: -len(rule[0]))
        self._prefixed = sorted(((r.prefix, ids[r.name]) for r in routes if r.prefix and not r.hosts),
                                key=lambda rule: -len(rule[0]))
        self._named = named
        # What a request's key depends on besides its target, for the front's key memo: None
        # when the target says it all (one origin, or prefixes only), so a hit pays nothing.
        self.select: Callable[[Request], Hashable] | None = (
            self._select if named or self._by_host else None)

    def route(self, host: str | None, path: str) -> str:
        """The identity of the origin serving `path` for a player who asked `host` (normalized)."""
        for prefix, ident in self._by_host.get(host, ()) if host is not None else ():
            if path.startswith(prefix):
                return ident
        for prefix, ident in self._prefixed:
            if path.startswith(prefix):
                return ident
        return self.default

    def key(self, request: Request) -> CacheKey:
        """The cache key of `request`: its target normalized, under the origin it is routed to.

        Raises:
            BadRequest: the target names no object (see `keys.target`); 502 for an
                `ORIGIN_HEADER` naming no origin of this node's topology.
        """
        path, query = target(request.target)
        if self._named and (named := request.headers.get(_NAMED)) is not None:
            ident = named.decode("latin-1")
            if ident not in self.by_identity:
                raise BadRequest(f"no origin {ident[:80]!r} in this node's topology (it differs from the "
                                 f"edge's)", 502)
            return CacheKey(path, query, ident)
        return CacheKey(path, query, self.route(host_of(request.headers.get(b"host")), path))

    def _select(self, request: Request) -> Hashable:
        headers = request.headers
        return (headers.get(_NAMED) if self._named else None, headers.get(b"host") if self._by_host else None,
                request.target)
