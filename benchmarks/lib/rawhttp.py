"""A small HTTP/1.1 client for load: one connection, one request at a time, answers parsed by httptools.

Not aiohttp's client: receiving 200 x 1 MiB at once, aiohttp alone costs
about 0.2 s more than a bare protocol on this machine (measured against
cached objects), which would hide the coalescing figure; and the attacker
needs as many requests per second as one core can make.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

import httptools

__all__ = ["Connection", "ConnectionClosed", "Response"]


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the answer was complete."""


@dataclass
class Response:
    """One answer as received: status, headers (lower-case names), body chunks when kept."""

    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0  # body bytes, kept or not
    complete: bool = False
    # CLOCK_MONOTONIC when the parser saw the answer's end: in the read callback, before any task the client
    # runs for it (a client with hundreds of connections answered at once queues those tasks behind each other).
    completed: float = 0.0

    def header(self, name: str) -> str:
        return self.headers.get(name.lower().encode(), b"").decode("latin-1").strip()

    def intact(self, digest: bytes) -> bool:
        """A complete 200 with the whole body it announced, and that body has this sha256."""
        length = self.headers.get(b"content-length")
        if self.status != 200 or not self.complete or length is None or self.received != int(length):
            return False
        sha = hashlib.sha256()
        for chunk in self.chunks:
            sha.update(chunk)
        return sha.digest() == digest


class Connection(asyncio.Protocol):
    """One client connection; `get()` sends a request and waits for its whole answer."""

    def __init__(self, host: str, port: int, keep_body: bool) -> None:
        self.host_header = f"Host: {host}:{port}\r\n".encode()
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response = Response()
        self.waiter: asyncio.Future[Response] | None = None
        self.headers_done = False

    @classmethod
    async def open(cls, host: str, port: int, source: str, keep_body: bool = False) -> Connection:
        """A connection to host:port from the local address `source`."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(host, port, keep_body), host, port,
                                               local_addr=(source, 0))
        return conn

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def get(self, path: str, close: bool = False) -> Response:
        """GET `path`; the answer once complete. Raises ConnectionClosed or httptools.HttpParserError."""
        if self.closed:
            raise ConnectionClosed(f"GET {path}: connection already closed")
        self.response, self.headers_done = Response(), False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.host_header  # type: ignore[union-attr]
                             + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(e)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        r = self.response
        if (self.headers_done and not r.complete and b"content-length" not in r.headers
                and b"transfer-encoding" not in r.headers):
            self.on_message_complete()  # a body delimited by the end of the connection
        self._fail(ConnectionClosed(f"closed after {r.received} body bytes" + (f": {exc!r}" if exc else "")))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.response.received += len(body)
        if self.keep_body:
            self.response.chunks.append(body)

    def on_message_complete(self) -> None:
        self.response.complete = True
        self.response.completed = time.monotonic()
        if not self.parser.should_keep_alive():
            self.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.response)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
