"""A shield node: the cache engine with each key's origin as its only upstream.

Whatever number of edges and viewers ask for a new segment, their requests
meet here (consistent hashing sends each key to one shield) and become one
origin fetch. Stale-if-error keeps playlists and segments flowing when the
origin stumbles. Edges name the key's origin in a header of ours; a player
asking a shield directly is routed by Host and path as an edge routes it.
A shield gives up on a hung origin sooner than its edges give up on it, so
they get its answer (a stale copy, or an error) rather than take it for hung.
"""

from __future__ import annotations

from livecdn.cache.upstreams import Upstreams
from livecdn.config import Topology
from livecdn.front.answers import ShieldFront
from livecdn.front.origins import Origins
from livecdn.node.cache import CacheNode

__all__ = ["SHIELD_FIRST_BYTE_SHARE", "ShieldNode"]

# The share of the first-byte wait (the edges' wait for a shield, from the same
# settings) a shield waits for its origin: it answers 504 or stale a quarter of
# that before its edges would eject it for a hang that is the origin's.
SHIELD_FIRST_BYTE_SHARE = 0.75


class ShieldNode(CacheNode):
    role = "shield"
    front_kind = ShieldFront

    def upstreams(self, topology: Topology) -> Upstreams:
        return Upstreams([], topology.routes)

    def upstream_waits(self) -> tuple[float, float, float]:
        connect, first_byte, read = super().upstream_waits()
        return connect, first_byte * SHIELD_FIRST_BYTE_SHARE, read

    def origins(self, topology: Topology) -> Origins:
        return Origins(topology.routes, named=True)
