"""Where a key is fetched from: shields by consistent hash, then the key's origin.

Consistent hashing sends every request for one object to one shield, so the
origin sees one fetch per object however many edges ask; when that shield
fails, the next one on the ring takes over for the key. A key names its
origin (`CacheKey.origin`): a shield is told which in `ORIGIN_HEADER`, the
origin itself gets the Host it expects. An upstream that its fetches found
hung or down (`livecdn.cache.health`) is left out of every key's list until
its back-off is over, so the next shield on the ring takes its keys at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from uhashring import HashRing

from livecdn.cache.health import Health
from livecdn.cache.keys import CacheKey, origin_identity
from livecdn.config.schema import OriginRoute

__all__ = ["ORIGIN_HEADER", "Upstreams"]

# Edge → shield: the identity of the key's origin. An identity rather than the
# player's Host: the shield then needs no routing of its own to agree with the
# edge, and a shield whose topology puts that origin elsewhere refuses (a 502,
# so the edge tries its next upstream) instead of storing another URL's bytes.
ORIGIN_HEADER = "x-livecdn-origin"


class Upstreams:
    """The ordered upstream list for each key, and what to tell each upstream.

    Args:
        shields: base URLs of the shield tier (may be empty).
        origins: every origin of the topology.
        origin_fallback: try the key's origin after every shield (it is
            tried alone when there are no shields).

    `health` (set by the node, which keeps it across reloads) is what fetches
    found of each upstream; None: every upstream is always tried.
    """

    __slots__ = ("_ring", "_single", "_origins", "_fallback", "_shields", "health")

    def __init__(self, shields: list[str], origins: Iterable[OriginRoute], origin_fallback: bool = False) -> None:
        self._origins = {origin_identity(o): o for o in origins}
        if not shields and not self._origins:
            raise ValueError("an upstream list needs at least one shield or an origin")
        self._shields = frozenset(shields)
        self._ring = HashRing(shields) if len(shields) > 1 else None
        self._single = tuple(shields[:1]) if len(shields) == 1 else None
        self._fallback = origin_fallback or not shields
        self.health: Health | None = None

    def _origin(self, key: CacheKey) -> OriginRoute:
        try:
            return self._origins[key.origin]
        except KeyError:  # a key made before a reload that dropped or moved its origin
            raise LookupError(f"{key}: origin {key.origin!r} is not in the topology") from None

    def order(self, key: CacheKey) -> tuple[str, ...]:
        """Upstream base URLs to try for `key`, best first, those ejected left out (never all of them)."""
        ranked = self._ranked(key)
        return ranked if self.health is None else self.health.order(ranked, time.monotonic())

    def _ranked(self, key: CacheKey) -> tuple[str, ...]:
        tail = (self._origin(key).url,) if self._fallback else ()
        if self._single is not None:
            return self._single + tail
        if self._ring is None:
            return tail
        return tuple(n["nodename"] for n in self._ring.range(key.key, unique=True)) + tail

    def tier(self, upstream: str) -> str:
        """What players are told `upstream` is (an error names the tier that failed, never its address)."""
        return "shield" if upstream in self._shields else "origin"

    def headers(self, key: CacheKey, upstream: str) -> tuple[tuple[str, str], ...]:
        """Request fields for fetching `key` from `upstream` (one of `order(key)`)."""
        if upstream in self._shields:
            return ((ORIGIN_HEADER, key.origin),)
        host = self._origin(key).host_header
        return (("host", host),) if host else ()

    @property
    def known(self) -> tuple[str, ...]:
        """Every upstream some key may be fetched from (the origins only where they are tried)."""
        origins = tuple(sorted({o.url for o in self._origins.values()})) if self._fallback else ()
        return tuple(sorted(self._shields)) + origins

    def report(self) -> dict[str, dict[str, object]]:
        """Each upstream's health for `/healthz` (all up when no health is kept)."""
        health = self.health or Health()
        return health.report(self.known, time.monotonic())
