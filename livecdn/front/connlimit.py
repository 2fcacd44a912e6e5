"""How many player connections a process may hold: per client address, and in all.

The player listener (`livecdn/front/listener.py`) asks `opened(peer)` in each new
connection's `connection_made` and reports `closed(peer)` in its
`connection_lost`; past the limit the connection gets the ready-made
`REFUSAL` (a 429) and is closed before a byte of it is parsed.

The total is a bound on file descriptors, the resource 20,000 idle
connections used up (issue 12): `connection_budget()` derives it from the
process's `RLIMIT_NOFILE`, leaving room for what else the process must open,
and past it a new connection gets the ready-made `OVERLOADED` (a 503). The
node reports itself overloaded in `/healthz` from `OVERLOAD_SHARE` of it on,
so the router sends new players elsewhere before the bound is reached.
"""

from __future__ import annotations

import math
import resource
from collections import Counter
from collections.abc import Callable

__all__ = ["ConnectionLimit", "MAX_LINGERING", "OVERLOADED", "OVERLOAD_SHARE", "REFUSAL", "RESERVED_FDS",
           "connection_budget", "per_process"]


def _plain(status: str, text: str) -> bytes:
    body = text.encode("ascii") + b"\n"
    return (b"HTTP/1.1 %s\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status.encode("ascii"), len(body), body))


REFUSAL = _plain("429 Too Many Requests", "too many connections from one client")
OVERLOADED = _plain("503 Service Unavailable", "this node is at its connection limit, try another")

# File descriptors a node process needs besides player and upstream
# connections: listening sockets, the admin listener and a few connections to
# it (/healthz must answer when players cannot get in), the event loop's own,
# logs, diskcache's SQLite files.
RESERVED_FDS = 96
# Refused connections held open at once while their refusal is read (the
# listener's lingering close): beyond these a refusal is written and the
# socket closed at once, so refusals never cost more descriptors than this.
MAX_LINGERING = 128
# A player connection holds a second descriptor while a disk-tier file is sent
# (sendfile): a fifth of the budget is kept for files open at once.
FILE_SHARE = 5
# The node reports itself overloaded from this share of its connections on:
# early enough that the router's next check (about a second) steers players
# away before new connections are refused.
OVERLOAD_SHARE = 0.9


def connection_budget(upstream: int, nofile: int | None = None) -> int:
    """Player connections one process can hold within its file descriptors.

    Args:
        upstream: upstream connections the process keeps open at most.
        nofile: the descriptor limit (default: this process's soft `RLIMIT_NOFILE`).

    Returns:
        At least 1: a process with too few descriptors still serves someone.
    """
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    spare = nofile - RESERVED_FDS - MAX_LINGERING - upstream
    return max(1, spare - spare // FILE_SHARE)


def per_process(node_total: int, workers: int, budget: int) -> int:
    """One worker's share of a node's connection limit, within its own `budget`.

    Args:
        node_total: player connections for the whole node (0: as many as descriptors allow).
        workers: processes sharing the port (the kernel spreads connections evenly over them).
        budget: what this process's descriptors allow (`connection_budget()`).
    """
    if node_total <= 0:
        return budget
    return max(1, min(budget, math.ceil(node_total / workers)))


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
