"""Accepting connections that begin with a PROXY header: the I/O shell around `proxyproto`.

Why not an `asyncio.Protocol` that parses the header from its first reads: a
transport reads whatever has arrived, the bytes after the header too, and
even one paused in `connection_made` may already have read them (uvloop did
in 22 of 40 connections here), while TLS must start on exactly those bytes
(`loop.start_tls` takes none already read). So the listening socket is
accepted here, each new socket's header read from it exactly
(`ProxyHeaderParser.wanted` bytes at a time, non-blocking, woken by
`add_reader`), and only then is the socket handed to the event loop
(`loop.connect_accepted_socket`, with TLS when asked), with a protocol made
for the header's source. The protocol never sees the header; with TLS its
`connection_made` comes once the handshake is done.

Bounds: a header must be whole within `header_timeout()` seconds of the
accept (and a TLS handshake after it as long again); `room()` is asked
before each accepted socket is read (the listener's `max_connections`, which
counts the sockets here in `pending`); at most `ACCEPT_BATCH` accepts per
wake-up, so a connection storm takes turns with the rest of the loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from ssl import SSLContext
from typing import Any

from .proxyproto import ProxyHeaderError, ProxyHeaderParser

__all__ = ["ACCEPT_BATCH", "NAMED_BOUND", "NamedPeers", "ProxyAcceptor"]

log = logging.getLogger("livecdn.front.proxyaccept")

# New connections accepted per wake-up of the listening socket; the rest wait for the next turn.
ACCEPT_BATCH = 64

# Connections remembered with the client their header named (`NamedPeers`), for a
# protocol that cannot be told (aiohttp's): the oldest are forgotten first. Far
# more than a router's listener holds open at once (its answers are 302s).
NAMED_BOUND = 1 << 16

# What makes a connection's protocol: (the client the header named, or the socket's peer when it named
# none; the socket's own peer address, as the transport will report it).
Factory = Callable[[str, Any], asyncio.BaseProtocol]


class ProxyAcceptor:
    """One listening socket whose connections each begin with a PROXY header.

    Args:
        factory: makes the protocol of a connection whose header has been read.
        header_timeout: seconds a header (and a TLS handshake after it) may take, read per connection.
        room: whether one more connection may be taken (False: it is closed at once).
        ssl: TLS after the header, or None.
    """

    __slots__ = ("_factory", "_timeout", "_room", "_ssl", "_loop", "_listener", "_reading", "_tasks", "refused")

    def __init__(self, factory: Factory, header_timeout: Callable[[], float], room: Callable[[], bool], *,
                 ssl: SSLContext | None = None) -> None:
        self._factory, self._timeout, self._room, self._ssl = factory, header_timeout, room, ssl
        self._loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._reading: set[_HeaderRead] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections closed for a missing, bad or late header, or a failed TLS handshake

    def open(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> None:
        """Listen on `host:port` (port 0: any; `port` says which)."""
        if self._listener is not None:
            raise RuntimeError("already listening")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=reuse_port)
        listener.setblocking(False)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)

    @property
    def port(self) -> int:
        """The port actually bound (kept after `close`)."""
        if self._listener is None:
            raise RuntimeError("not listening")
        return int(self._listener.getsockname()[1])

    @property
    def pending(self) -> int:
        """Connections taken whose header (or TLS handshake) is not through yet."""
        return len(self._reading) + len(self._tasks)

    async def close(self) -> None:
        """Stop accepting; drop connections still on their header or handshake. Safe to call twice."""
        listener = self._listener
        if listener is not None and listener.fileno() >= 0:
            self._loop.remove_reader(listener.fileno())
            listener.close()
        for read in list(self._reading):
            read.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, most likely: the backlog holds the rest meanwhile
                log.warning("accepting a connection failed: %s", e)
                return
            if not self._room():
                sock.close()
                continue
            sock.setblocking(False)
            self._reading.add(_HeaderRead(self, sock, peer))

    def _failed(self, read: _HeaderRead, why: str) -> None:
        self._reading.discard(read)
        self.refused += 1
        log.info("closing a connection from %s: %s", read.peer[0], why)

    def _read(self, read: _HeaderRead, source: str | None) -> None:
        """The header is whole: hand the socket to the loop (with TLS when asked) and its protocol."""
        self._reading.discard(read)
        task = self._loop.create_task(self._connect(read.sock, source or str(read.peer[0]), read.peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket, source: str, peer: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(source, peer), sock, ssl=self._ssl,
                ssl_handshake_timeout=self._timeout() if self._ssl is not None else None)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as e:  # noqa: BLE001 - a failed handshake ends this connection only
            self.refused += 1
            log.info("TLS with %s (for %s) failed: %s", peer[0], source, e)
            sock.close()


class _HeaderRead:
    """One accepted socket whose header is being read, exactly, within the header timeout."""

    __slots__ = ("acceptor", "sock", "peer", "parser", "timer")

    def __init__(self, acceptor: ProxyAcceptor, sock: socket.socket, peer: Any) -> None:
        self.acceptor, self.sock, self.peer = acceptor, sock, peer
        self.parser = ProxyHeaderParser()
        loop = acceptor._loop
        loop.add_reader(sock.fileno(), self._readable)
        timeout = acceptor._timeout()
        self.timer = loop.call_later(timeout, self._fail, f"no whole PROXY header within {timeout:g} s")

    def _readable(self) -> None:
        parser, header = self.parser, None
        try:
            while header is None:
                data = self.sock.recv(parser.wanted)
                if not data:
                    raise ProxyHeaderError("the connection closed before its PROXY header ended")
                header = parser.receive_data(data)
        except (BlockingIOError, InterruptedError):
            return  # the rest of the header is yet to come
        except (ProxyHeaderError, OSError) as e:
            self._fail(str(e))
            return
        self._stop()
        self.acceptor._read(self, header.source)

    def _stop(self) -> None:
        self.timer.cancel()
        if self.sock.fileno() >= 0:
            self.acceptor._loop.remove_reader(self.sock.fileno())

    def _fail(self, why: str) -> None:
        self.close()
        self.acceptor._failed(self, why)

    def close(self) -> None:
        self._stop()
        self.sock.close()
        self.acceptor._reading.discard(self)


class NamedPeers:
    """The client each connection's PROXY header named, by the socket's peer address (the transport's `peername`).

    For a protocol that is not made knowing its client (aiohttp's request
    handler): its request looks itself up by `request.transport`'s peer. A
    peer address is unique among open connections, and a new connection
    from a reused one (same address and port) overwrites the old entry before
    any request on it, so an entry is never another connection's.
    """

    __slots__ = ("_named",)

    def __init__(self) -> None:
        self._named: OrderedDict[Any, str] = OrderedDict()

    def factory(self, make: Callable[[], asyncio.BaseProtocol]) -> Factory:
        """A `ProxyAcceptor` factory that remembers each connection's client, then calls `make()`."""
        def named(source: str, peer: Any) -> asyncio.BaseProtocol:
            self._named[peer] = source
            self._named.move_to_end(peer)
            if len(self._named) > NAMED_BOUND:
                self._named.popitem(last=False)
            return make()
        return named

    def source(self, peer: Any) -> str | None:
        """The client named for the connection from `peer`, or None (not one of ours, or forgotten)."""
        return self._named.get(peer)
