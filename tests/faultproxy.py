"""A TCP proxy between two tiers that a test can make misbehave, as a real network or host does.

`FaultProxy(target_port)` forwards every connection to 127.0.0.1:target_port
until the test says otherwise (`proxy.mode = ...`):

- `PASS`: forward both ways.
- `HANG`: what a SIGSTOPped host looks like from outside: new connections are
  accepted (the kernel does that) and nothing is ever forwarded or answered;
  connections already open stop moving too, mid-body or not.
- `STALL`: forward requests, and on each connection `stall_after` more bytes
  of answers from the moment STALL is set, then nothing more (a body that
  stops mid-way, even on a keep-alive connection that carried answers before).
- `RESET`: close every connection, new and open, with a TCP reset.

Switching back to `PASS` lets connections held by `HANG` move again, as a
SIGCONT would. Bytes are counted per direction so a test can tell what got through.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct

__all__ = ["FaultProxy", "Mode"]

# Bytes read per forward step: small enough that a STALL cuts inside a segment.
CHUNK = 16 << 10


class Mode(enum.Enum):
    PASS = "pass"
    HANG = "hang"
    STALL = "stall"
    RESET = "reset"


class FaultProxy:
    """See the module docstring; `async with FaultProxy(port) as proxy:` then `proxy.port`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", stall_after: int = 1000) -> None:
        self.target = (target_host, target_port)
        self.stall_after = stall_after
        self._mode = Mode.PASS
        self._moving = asyncio.Event()
        self._moving.set()
        self._stalls = 0  # times STALL was set: each connection's allowance starts again
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.upstream_bytes = 0  # towards the target
        self.downstream_bytes = 0  # back to the client

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        if mode is Mode.STALL:
            self._stalls += 1
        if mode is Mode.HANG:
            self._moving.clear()
        else:
            self._moving.set()
        if mode is Mode.RESET:
            for w in list(self._writers):
                _reset(w)

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._moving.set()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self._mode is Mode.RESET:
                _reset(writer)
                return
            await self._moving.wait()  # HANG: accepted, never forwarded
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer, upstream=True),
                                 self._pipe(up_reader, writer, upstream=False))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        sent, stalls = 0, self._stalls  # answer bytes since STALL was last set, for STALL
        while True:
            data = await reader.read(CHUNK)
            if not data:
                writer.transport.abort()
                return
            await self._moving.wait()
            if self._mode is Mode.STALL and not upstream:
                if stalls != self._stalls:
                    sent, stalls = 0, self._stalls
                room = max(self.stall_after - sent, 0)
                data = data[:room]
                if not data:
                    await asyncio.Event().wait()  # never again: the test's mode change or exit ends it
            if upstream:
                self.upstream_bytes += len(data)
            else:
                self.downstream_bytes += len(data)
                sent += len(data)
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: SO_LINGER 0, as a crashed host's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
