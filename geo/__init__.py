"""The geo router: tells each player which edge to use, by DNS and by HTTP 302."""

from .node import GeoNode

__all__ = ["GeoNode"]
