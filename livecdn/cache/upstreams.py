"""Where a key is fetched from: its owner among the node's workers, shields by consistent hash, then the origin.

Consistent hashing sends every request for one object to one shield, so the
origin sees one fetch per object however many edges ask; when that shield
fails, the next one on the ring takes over for the key. A key names its
origin (`CacheKey.origin`): a shield is told which in `ORIGIN_HEADER`, the
origin itself gets the Host it expects. An upstream that its fetches found
hung or down (`livecdn.cache.health`) is left out of every key's list until
its back-off is over, so the next shield on the ring takes its keys at once.

A node of several worker processes is one cache to its upstreams: each key
has an owner among the workers (`owner`, the same answer in every worker
without asking), and the others fetch it from the owner, which asks the
shields and the origin once for all of them. Live playlists live half a
target duration, too short for the shared disk tier to carry them between
workers: without this each worker asked the upstream for each once per
expiry. An owner that fails to answer (dead, hung) is ejected like any
upstream, and its keys go to the shields directly until it answers again.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from uhashring import HashRing

from livecdn.cache.health import Health
from livecdn.cache.keys import CacheKey, origin_identity
from livecdn.config.schema import OriginRoute

__all__ = ["ORIGIN_HEADER", "Upstreams", "Workers", "owner", "worker_url"]

# Edge → shield: the identity of the key's origin. An identity rather than the
# player's Host: the shield then needs no routing of its own to agree with the
# edge, and a shield whose topology puts that origin elsewhere refuses (a 502,
# so the edge tries its next upstream) instead of storing another URL's bytes.
ORIGIN_HEADER = "x-livecdn-origin"
# What players are told a sibling worker is, when it is the tier that failed.
WORKER_TIER = "worker"


def owner(key: str, workers: int) -> int:
    """The slot of the worker that fetches `key` for its node (a hash every worker computes alike)."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % workers


def worker_url(slot: int) -> str:
    """The base URL a sibling worker is asked by: a name its own session resolves (`livecdn.node.siblings`)."""
    return f"http://worker-{slot}"


@dataclass(frozen=True, slots=True)
class Workers:
    """This process's place among its node's worker processes."""

    slot: int  # this worker's, 0 to count - 1
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.slot < self.count:
            raise ValueError(f"worker slot {self.slot} is not in 0..{self.count - 1}")

    @property
    def siblings(self) -> tuple[str, ...]:
        """The other workers' base URLs."""
        return tuple(worker_url(s) for s in range(self.count) if s != self.slot)


class Upstreams:
    """The ordered upstream list for each key, and what to tell each upstream.

    Args:
        shields: base URLs of the shield tier (may be empty).
        origins: every origin of the topology.
        origin_fallback: try the key's origin after every shield (it is
            tried alone when there are no shields).
        workers: this process's place among its node's workers (None: the only one).

    `health` (set by the node, which keeps it across reloads) is what fetches
    found of each upstream; None: every upstream is always tried.
    """

    __slots__ = ("_ring", "_single", "_origins", "_fallback", "_shields", "_workers", "_siblings", "health")

    def __init__(self, shields: list[str], origins: Iterable[OriginRoute], origin_fallback: bool = False,
                 workers: Workers | None = None) -> None:
        self._origins = {origin_identity(o): o for o in origins}
        if not shields and not self._origins:
            raise ValueError("an upstream list needs at least one shield or an origin")
        self._shields = frozenset(shields)
        self._ring = HashRing(shields) if len(shields) > 1 else None
        self._single = tuple(shields[:1]) if len(shields) == 1 else None
        self._fallback = origin_fallback or not shields
        self._workers = workers if workers is not None and workers.count > 1 else None
        self._siblings = frozenset(self._workers.siblings) if self._workers is not None else frozenset()
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
        workers = self._workers
        if workers is not None:
            slot = owner(key.key, workers.count)
            if slot != workers.slot:
                return (worker_url(slot),) + self._upstream(key)
        return self._upstream(key)

    def _upstream(self, key: CacheKey) -> tuple[str, ...]:
        """The node's own upstreams for `key`: its shields by hash, then the origin where it may go."""
        tail = (self._origin(key).url,) if self._fallback else ()
        if self._single is not None:
            return self._single + tail
        if self._ring is None:
            return tail
        return tuple(n["nodename"] for n in self._ring.range(key.key, unique=True)) + tail

    def tier(self, upstream: str) -> str:
        """What players are told `upstream` is (an error names the tier that failed, never its address)."""
        if upstream in self._siblings:
            return WORKER_TIER
        return "shield" if upstream in self._shields else "origin"

    @property
    def siblings(self) -> frozenset[str]:
        """The base URLs of this node's other workers."""
        return self._siblings

    def headers(self, key: CacheKey, upstream: str) -> tuple[tuple[str, str], ...]:
        """Request fields for fetching `key` from `upstream` (one of `order(key)`)."""
        if upstream in self._shields or upstream in self._siblings:
            return ((ORIGIN_HEADER, key.origin),)
        host = self._origin(key).host_header
        return (("host", host),) if host else ()

    @property
    def known(self) -> tuple[str, ...]:
        """Every upstream some key may be fetched from (the origins only where they are tried)."""
        origins = tuple(sorted({o.url for o in self._origins.values()})) if self._fallback else ()
        return tuple(sorted(self._siblings)) + tuple(sorted(self._shields)) + origins

    def report(self) -> dict[str, dict[str, object]]:
        """Each upstream's health for `/healthz` (all up when no health is kept)."""
        health = self.health or Health()
        return health.report(self.known, time.monotonic())
