"""Connections per client address, counted where connections begin and end.

A protocol-factory wrapper around aiohttp's server: each new connection is
counted against its peer address; past the limit the connection gets a
ready-made 429 and is closed before a byte of it is parsed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Callable

__all__ = ["ConnectionLimit"]

REFUSAL = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 36\r\n\r\ntoo many connections from one client\n")


class ConnectionLimit:
    """Wraps a protocol factory (aiohttp's `web.Server`); everything else passes through.

    Args:
        factory: the real protocol factory.
        limit: open connections allowed per peer address.
        on_refused: called once per refused connection (metrics).
    """

    def __init__(self, factory: Any, limit: int, on_refused: Callable[[], None]) -> None:
        self._factory = factory
        self.limit = limit
        self.open: Counter[str] = Counter()
        self._on_refused = on_refused

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self, self._factory())

    def __getattr__(self, name: str) -> Any:
        # The runner drives the server's shutdown (pre_shutdown, shutdown, connections).
        return getattr(self._factory, name)

    def opened(self, peer: str) -> bool:
        if self.open[peer] >= self.limit:
            self._on_refused()
            return False
        self.open[peer] += 1
        return True

    def closed(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


class _Counted(asyncio.Protocol):
    """Forwards every protocol call to the real handler, counting the connection."""

    __slots__ = ("_limit", "_inner", "_peer")

    def __init__(self, limit: ConnectionLimit, inner: asyncio.Protocol) -> None:
        self._limit = limit
        self._inner = inner
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        if not self._limit.opened(peer):
            transport.write(REFUSAL)  # type: ignore[attr-defined]
            transport.close()
            return
        self._peer = peer
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is None:
            return
        self._limit.closed(self._peer)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._peer is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
