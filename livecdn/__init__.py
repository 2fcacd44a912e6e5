"""livecdn: the distribution tier of a live video platform (edge, shield, geo router)."""

__version__ = "0.1.0"
