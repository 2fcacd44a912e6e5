"""The shield tier: one cache in front of the origin, so the origin sees one fetch per object."""

from .node import ShieldNode

__all__ = ["ShieldNode"]
