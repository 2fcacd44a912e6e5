"""The edge tier: serves players from memory, then disk, then a shield."""

from .node import EdgeNode

__all__ = ["EdgeNode"]
