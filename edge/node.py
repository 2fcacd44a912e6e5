"""An edge node: near viewers, serving from memory and disk, filling from shields.

Each key goes to the shield its consistent hash picks, then the next one when
that shield fails, and to the origin itself only where the topology allows
it. A guard screens every name before the engine sees it. The edge reports
its load against its capacity in /healthz so the router can send players
elsewhere.
"""

from __future__ import annotations

from livecdn.config import EdgeConfig, Topology
from livecdn.node import CacheNode
from livecdn.upstream import Upstreams

from .guard import NameGuard

__all__ = ["EdgeNode"]


class EdgeNode(CacheNode):
    role = "edge"
    config: EdgeConfig

    def upstreams(self, topology: Topology) -> Upstreams:
        shields = [s.listen.url for s in topology.shields.values()]
        return Upstreams(shields, topology.origin_url, self.config.origin_fallback)

    def guard(self) -> NameGuard:
        return NameGuard()

    def health(self) -> dict[str, object]:
        out = super().health()
        assert self.front is not None
        out.update(region=self.config.region, capacity=self.config.capacity,
                   load=round(self.front.inflight / self.config.capacity, 4),
                   overloaded=self.front.inflight >= self.config.capacity)
        return out
