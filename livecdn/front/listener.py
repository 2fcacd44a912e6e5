"""The player listener: the one I/O shell around `http1.RequestParser` and the front.

`PlayerServer` owns the listening socket(s), every open connection and the one
shutdown path (stop accepting, close idle keep-alive connections, let answers
in flight finish under one timeout, then close the rest). `PlayerConnection`
is an `asyncio.Protocol` per connection:

- bytes go to its parser; complete requests queue up, in order. Past
  `MAX_PIPELINED` queued requests it stops reading until the queue drains.
- the front answers a request synchronously when it can (a memory hit is one
  `writelines` of a pre-built head and the body); otherwise one task per
  connection answers it and every request queued behind it, so answers leave
  in the order the requests came.
- writing is flow-controlled as in aiohttp's `BaseProtocol`: the transport's
  `pause_writing()` / `resume_writing()` flip a flag, and `drain()` awaits one
  shared waiter, so a slow player holds back only its own coroutine.
- keep-alive idleness is watched by one `loop.call_at` handle per
  connection, rescheduled rather than re-created per request.
- connections per client address are counted here (`ConnectionLimit`): past
  the limit a connection gets a ready-made 429 before a byte is parsed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import TYPE_CHECKING, Any

from livecdn.front.connlimit import REFUSAL, ConnectionLimit
from livecdn.front.http1 import ProtocolError, Request, RequestParser

if TYPE_CHECKING:
    from livecdn.front.answers import PlayerFront

__all__ = ["HIGH_WATER", "KEEPALIVE_TIMEOUT", "MAX_PIPELINED", "PlayerConnection", "PlayerServer"]

log = logging.getLogger("livecdn.front.listener")

# Requests parsed ahead of the one being answered (HTTP pipelining). Past this
# the connection stops reading: a client cannot make us queue more work than
# it lets us answer (aiohttp's MAX_MSG_QUEUE_SIZE). Reading resumes once the
# queue is down to RESUME_PIPELINED.
MAX_PIPELINED = 16
RESUME_PIPELINED = 4
# Bytes the transport may buffer for one player before writers wait for it
# to drain (aiohttp's StreamWriter LIMIT, uvicorn's HIGH_WATER_LIMIT): a slow
# player then falls behind in its own coroutine, holding an offset into the
# shared body rather than a copy of it.
HIGH_WATER = 64 << 10
# How long a kept-alive connection may sit without a request (aiohttp's default).
KEEPALIVE_TIMEOUT = 75.0


class PlayerServer:
    """The player listener of one node process; the protocol factory of its sockets.

    Args:
        front: answers requests (`livecdn.front.PlayerFront`).
        keepalive_timeout: seconds an idle kept-alive connection stays open.
        connection_limit: open connections per client address, or None.
    """

    __slots__ = ("front", "keepalive_timeout", "connection_limit", "connections", "_server", "_all_closed",
                 "_closing")

    def __init__(self, front: PlayerFront, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 connection_limit: ConnectionLimit | None = None) -> None:
        if keepalive_timeout <= 0:
            raise ValueError(f"keepalive_timeout must be positive, got {keepalive_timeout!r}")
        self.front = front
        self.keepalive_timeout = keepalive_timeout
        self.connection_limit = connection_limit
        self.connections: set[PlayerConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Future[None] | None = None
        self._closing = False

    def __call__(self) -> PlayerConnection:
        return PlayerConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> None:
        if self._server is not None:
            raise RuntimeError("player server already started")
        self._server = await asyncio.get_running_loop().create_server(
            self, host, port, reuse_port=reuse_port or None, backlog=backlog)

    @property
    def port(self) -> int:
        """The port actually bound (so port 0 works)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("player server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    def closed(self, conn: PlayerConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, end idle connections, let answers in flight finish, close the rest.

        Safe to call twice.
        """
        if self._server is not None:
            self._server.close()
            self._server = None
        self._closing = True
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_closed), timeout)
            except asyncio.TimeoutError:
                log.warning("%d player connections still busy after %.1f s: closing them",
                            len(self.connections), timeout)
        tasks = [t for t in (c.abort() for c in list(self.connections)) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class PlayerConnection(asyncio.Protocol):
    """One player connection: parser in, answers out, in order, at the player's pace."""

    __slots__ = ("server", "front", "transport", "peer", "parser", "queue", "task", "must_close",
                 "_loop", "_counted", "_reading_paused", "_writing_paused", "_drain_waiter", "_lost",
                 "_idle_since", "_timer", "_closing", "_eof")

    def __init__(self, server: PlayerServer) -> None:
        self.server = server
        self.front = server.front
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.queue: collections.deque[Request | ProtocolError] = collections.deque()
        self.parser = RequestParser(events=self.queue)  # complete requests land in the queue
        self.task: asyncio.Task[None] | None = None
        self.must_close = False  # the answer being written ends the connection
        self._loop = asyncio.get_running_loop()
        self._counted = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False  # shutdown asked: no keep-alive past the answer in flight
        self._eof = False  # the player half-closed: close once its requests are answered

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        limit = self.server.connection_limit
        if limit is not None:
            if not limit.opened(self.peer):
                transport.write(REFUSAL)  # type: ignore[attr-defined]
                transport.close()
                self._lost = True
                return
            self._counted = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # answers are whole heads plus bodies: never wait for more to coalesce
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[union-attr]
        self.server.connections.add(self)
        self._went_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            assert self.server.connection_limit is not None
            self.server.connection_limit.closed(self.peer)
        self._lost = True
        self.queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("player went away"))
        if self.task is not None:
            self.task.cancel()  # the answer has nobody to go to; shared fetches go on without it
        self.server.closed(self)

    def data_received(self, data: bytes) -> None:
        self.parser.receive_data(data)
        queue = self.queue
        if self.task is None and queue:
            self._answer_ready()
        if len(queue) > MAX_PIPELINED and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # The player half-closed: answer what it asked for, then close (return
        # False). With nothing pending, close now.
        if self.task is None and not self.queue:
            return False
        self._eof = True
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- what the front uses to answer ---

    def keep_alive(self, request: Request) -> bool:
        """Whether the answer to `request` leaves the connection open; records the decision."""
        keep = request.keep_alive and not self._closing and not self.must_close
        if not keep:
            self.must_close = True
        return keep

    def write(self, data: bytes | memoryview) -> None:
        if self._lost:
            raise ConnectionResetError("player went away")
        self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, data: list[bytes | memoryview] | tuple[bytes | memoryview, ...]) -> None:
        if self._lost:
            raise ConnectionResetError("player went away")
        self.transport.writelines(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        """Wait while the transport holds more than `HIGH_WATER` bytes for this player.

        Raises:
            ConnectionResetError: the player went away.
        """
        if self._lost:
            raise ConnectionResetError("player went away")
        if not self._writing_paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        await asyncio.shield(waiter)  # several awaiting it must not cancel it for each other

    def cut(self) -> None:
        """End the connection at once (a body that broke must not pass for a whole one)."""
        self.must_close = True
        if self.transport is not None:
            self.transport.abort()

    # --- answering, in order ---

    def _answer_ready(self) -> None:
        """Answer queued requests synchronously while the front can; hand the rest to a task."""
        queue, front = self.queue, self.front
        while queue:
            if self._writing_paused or self._lost:
                self._start_task(None)
                return
            event = queue.popleft()
            if isinstance(event, ProtocolError):
                front.refuse(event, self)
                self._close_after_answer()
                return
            try:
                pending = front.answer_now(event, self)
            except Exception:  # noqa: BLE001 - one request's bug must not wedge the connection
                log.exception("answering %s failed", self.peer)
                self.must_close = True
                pending = None
            if pending is not None:
                self._start_task((event, pending))
                return
            if self.must_close:
                break
        self._answered()

    def _answered(self) -> None:
        """Every queued request is answered: close if that was asked, else read and idle."""
        if self.must_close:
            self._close_after_answer()
            return
        if self._reading_paused:
            self._maybe_resume_reading()
        self._went_idle()

    def _start_task(self, first: tuple[Request, Any] | None) -> None:
        self.task = self._loop.create_task(self._answer_in_order(first))

    async def _answer_in_order(self, first: tuple[Request, Any] | None) -> None:
        queue, front = self.queue, self.front
        try:
            if first is not None:
                await front.answer_later(first[0], first[1], self)
            while queue and not self.must_close and not self._lost:
                self._maybe_resume_reading()
                await self.drain()
                event = queue.popleft()
                if isinstance(event, ProtocolError):
                    front.refuse(event, self)
                    self.must_close = True
                    break
                pending = front.answer_now(event, self)
                if pending is not None:
                    await front.answer_later(event, pending, self)
        except (ConnectionError, asyncio.CancelledError):
            self.must_close = True
        except Exception:  # noqa: BLE001 - one connection's bug must not take the listener down
            log.exception("answering %s failed", self.peer)
            self.must_close = True
        finally:
            self.task = None
        if not self._lost:
            self._answered()

    def _close_after_answer(self) -> None:
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first

    def _maybe_resume_reading(self) -> None:
        if self._reading_paused and len(self.queue) <= RESUME_PIPELINED and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # --- keep-alive: one timer handle, rescheduled ---

    def _went_idle(self) -> None:
        if self._closing or self._eof:
            self._close_after_answer()
            return
        self._idle_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._idle_since + self.server.keepalive_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self._lost or self.task is not None or self.queue:
            return  # busy: the next `_went_idle()` arms the timer again
        deadline = self._idle_since + self.server.keepalive_timeout
        if self._loop.time() >= deadline:
            self._close_after_answer()
        else:
            self._timer = self._loop.call_at(deadline, self._idle_check)

    # --- shutdown ---

    def shutdown(self) -> None:
        """Graceful: an idle connection closes now, a busy one after the answer in flight."""
        self._closing = True
        if self.task is None and not self.queue:
            self._close_after_answer()

    def abort(self) -> asyncio.Task[None] | None:
        """Forceful: cancel the answer in flight, drop the connection; returns the task to await."""
        task = self.task
        if task is not None:
            task.cancel()
        if self.transport is not None:
            self.transport.abort()
        return task
