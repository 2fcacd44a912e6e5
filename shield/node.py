"""A shield node: the cache engine with each key's origin as its only upstream.

Whatever number of edges and viewers ask for a new segment, their requests
meet here (consistent hashing sends each key to one shield) and become one
origin fetch. Stale-if-error keeps playlists and segments flowing when the
origin stumbles. Edges name the key's origin in a header of ours; a player
asking a shield directly is routed by Host and path as an edge routes it.
A shield waiting on a slow origin still answers its edges' probes, so they
wait for it rather than take it for hung (`Engine._head`).
"""

from __future__ import annotations

from livecdn.cache.upstreams import Upstreams
from livecdn.config import Topology
from livecdn.front.answers import ShieldFront
from livecdn.front.origins import Origins
from livecdn.node.cache import CacheNode

__all__ = ["ShieldNode"]


class ShieldNode(CacheNode):
    role = "shield"
    front_kind = ShieldFront

    def upstreams(self, topology: Topology) -> Upstreams:
        return Upstreams([], topology.routes, workers=self.workers)

    def origins(self, topology: Topology) -> Origins:
        return Origins(topology.routes, named=True)
