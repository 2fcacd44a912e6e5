"""Connections per client address, counted where connections begin and end.

The player listener (`livecdn/front/listener.py`) asks `opened(peer)` in each new
connection's `connection_made` and reports `closed(peer)` in its
`connection_lost`; past the limit the connection gets the ready-made
`REFUSAL` (a 429) and is closed before a byte of it is parsed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

__all__ = ["ConnectionLimit", "REFUSAL"]

REFUSAL = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 36\r\n\r\ntoo many connections from one client\n")


class ConnectionLimit:
    """Open connections per peer address.

    Args:
        limit: open connections allowed per peer address; 0 means unlimited.
            Connections are counted either way, so the limit can be changed
            while the node runs (`limit` is a plain attribute).
        on_refused: called once per refused connection (metrics).

    Raises:
        ValueError: the limit is negative.
    """

    __slots__ = ("limit", "open", "_on_refused")

    def __init__(self, limit: int, on_refused: Callable[[], None]) -> None:
        if limit < 0:
            raise ValueError(f"connection limit must not be negative, got {limit!r}")
        self.limit = limit
        self.open: Counter[str] = Counter()
        self._on_refused = on_refused

    def opened(self, peer: str) -> bool:
        """Count a new connection from `peer`; False (and counted as refused) past the limit."""
        if self.limit and self.open[peer] >= self.limit:
            self._on_refused()
            return False
        self.open[peer] += 1
        return True

    def closed(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]
