"""A shield node: the cache engine with the origin as its only upstream.

Whatever number of edges and viewers ask for a new segment, their requests
meet here (consistent hashing sends each key to one shield) and become one
origin fetch. Stale-if-error keeps playlists and segments flowing when the
origin stumbles.
"""

from __future__ import annotations

from livecdn.cache.upstreams import Upstreams
from livecdn.config import Topology
from livecdn.node.cache import CacheNode

__all__ = ["ShieldNode"]


class ShieldNode(CacheNode):
    role = "shield"

    def upstreams(self, topology: Topology) -> Upstreams:
        return Upstreams([], topology.origin_url)
