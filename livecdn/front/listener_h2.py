"""The HTTP/2 player connection: the one I/O shell around `http2.ServerConnection`.

A player connection becomes HTTP/2 in `listener.PlayerConnection`: TLS
negotiated ALPN "h2", or (h2c, prior knowledge) its first bytes are the
HTTP/2 preface. That connection hands its transport over
(`transport.set_protocol`) to an `Http2Connection`, which keeps the same
`PlayerServer` bookkeeping: it takes the other's place in `connections`
(and its count in the per-address limit), writes the same access lines, and
drains in the same `shutdown()`.

Each stream is answered through the same `Handler` and plans as HTTP/1.1:
a plan in hand (a memory hit, a refusal) is queued on its stream right in
`data_received`; a `Later` gets one task per stream, which streams a fill
(`Stream`) or a disk-tier file (`FileRange`, read off the loop in steps:
sendfile cannot frame DATA) at the player's pace. Pace is two bounds: what
waits on a stream (`STREAM_BUFFER`; its writer waits past it) and what the
transport holds (`HIGH_WATER`; frames are made only for the room under it).
A stream the client resets has its task cancelled: the answer stops, its
plan is released, a shared fetch goes on.

Memory per connection is bounded by name: one incomplete frame (h2's, at
most its 16 KiB frame size) and one header block (`http2.MAX_HEADER_BLOCK`),
`http2.MAX_STREAMS` request heads (each within `http2.MAX_HEADER_LIST`),
`STREAM_BUFFER` per stream of references into shared bodies (plus one
`FILE_STEP` read per stream sending a file), and `HIGH_WATER` in the transport.
Time is bounded too: an idle connection ends after the keep-alive timeout
(the header timeout before its first request), and one whose queued bytes no
window lets out for `STALL_TIMEOUT` ends (a client that never sends
WINDOW_UPDATE holds nothing for ever).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from livecdn.logs import AccessLog, request_id
from livecdn.metrics import Tally

from .connlimit import ConnectionLimit
from .flow import HIGH_WATER, LINGER, FlowControl
from .forwarded import ClientAddresses
from .http2 import ErrorCodes, RequestReceived, RequestRejected, ServerConnection, StreamCancelled
from .plan import BodyBroken, FileRange, Later, Plan, Stream
from .request import Request

if TYPE_CHECKING:
    from .listener import Handler

__all__ = ["FILE_STEP", "Http2Connection", "STALL_TIMEOUT", "STREAM_BUFFER"]

log = logging.getLogger("livecdn.front.listener")

# Body bytes queued on one stream before its writer waits: one HTTP/1.1
# connection's worth of buffering (HIGH_WATER), per stream.
STREAM_BUFFER = 64 << 10
# Bytes read from a disk-tier file per step: one stream's buffer at a time.
FILE_STEP = STREAM_BUFFER
# How long a stream (or a connection) may have bytes waiting that no flow
# control window lets out: a player that stops reading that long has gone.
STALL_TIMEOUT = 30.0


class Server(Protocol):
    """What the HTTP/2 connection needs of `listener.PlayerServer` (its bookkeeping)."""

    handler: Handler
    access: AccessLog | None
    connections: set[Any]
    connection_limit: ConnectionLimit | None
    addresses: ClientAddresses | None
    tally: Tally | None
    keepalive_timeout: float
    header_timeout: float
    closing: bool

    def closed(self, conn: object) -> None: ...


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 player connection: streams in, answers out, each at its own pace."""

    __slots__ = ("server", "handler", "access", "transport", "peer", "h2", "flow", "tasks", "waiters", "_loop",
                 "_counted", "_timer", "_idle_since", "_served", "_busy", "_stall_since", "_closed", "_forwards")

    def __init__(self, server: Server, transport: asyncio.Transport, peer: str, counted: bool,
                 handler: Handler | None = None) -> None:
        self.server = server
        self.handler = server.handler if handler is None else handler  # the listener's (a redirect, say)
        self.access = server.access
        self.transport = transport
        self.peer = peer
        # The peer is a trusted proxy: each request names its client (as `PlayerConnection._admit` decides).
        self._forwards = server.addresses is not None and server.addresses.trusts(peer)
        self.h2 = ServerConnection()
        self.flow = FlowControl(transport)
        self.tasks: dict[int, asyncio.Task[None]] = {}  # streams answered by a task (`Later` plans)
        self.waiters: dict[int, asyncio.Future[None]] = {}  # stream writers waiting for their queue to drain
        self._loop = asyncio.get_running_loop()
        self._counted = counted  # counted in the server's per-address limit (released in connection_lost)
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = self._loop.time()
        self._served = False  # a request came: idle from now on means keep-alive, not header timeout
        self._busy = False  # streams were being answered at the last flush
        self._stall_since: float | None = None
        self._closed = False

    def start(self, data: bytes) -> None:
        """Take over the connection: our SETTINGS, then what the client already sent (the preface at least)."""
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.h2.initiate()
        self._arm(self._idle_since + self.server.header_timeout)
        if data:
            self.data_received(data)
        else:
            self._flush()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover - set_protocol
        raise RuntimeError("an HTTP/2 connection is handed an open transport (start()), never made")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._counted:
            self._counted = False
            assert self.server.connection_limit is not None
            self.server.connection_limit.closed(self.peer)
        self.flow.connection_lost()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self.tasks.values():
            task.cancel()  # nobody to answer; shared fetches go on without them
        self._wake_all()
        self.server.closed(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # closing: what the client still sends is read and dropped
        events = self.h2.receive_data(data, self._loop.time())
        now = time.time()
        for ev in events:
            if isinstance(ev, RequestReceived):
                self._served = True
                self._answer(ev.stream_id, ev.request, now)
            elif isinstance(ev, RequestRejected):
                self._served = True
                err = ev.error
                self._send(ev.stream_id, None, self.handler.refuse(err.status, err.reason, err.headers))
            elif isinstance(ev, StreamCancelled):
                task = self.tasks.pop(ev.stream_id, None)
                if task is not None:
                    task.cancel()
            else:
                if ev.error_code:
                    log.info("HTTP/2 connection from %s ended: %s", self.peer, ev.reason)
                self._end()
                return
        self._flush()

    def eof_received(self) -> bool | None:
        return False  # HTTP/2 has GOAWAY for a graceful end: a half-close ends the connection

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self._flush()

    # --- answering, per stream ---

    def _answer(self, sid: int, request: Request, now: float) -> None:
        if self.access is not None or self.server.tally is not None:
            request.received = time.perf_counter()
        try:
            addresses = self.server.addresses
            client = addresses.client_of(self.peer, request) if addresses is not None and self._forwards else self.peer
            plan = self.handler.answer_now(request, client, now)
        except Exception:  # noqa: BLE001 - one request's bug must not wedge the connection
            plan = self._failed(request)
        if type(plan) is Later:
            task = self.tasks[sid] = self._loop.create_task(self._answer_later(sid, plan))
            task.add_done_callback(functools.partial(self._task_done, sid))
            return
        self._send(sid, request, plan)  # type: ignore[arg-type]

    def _task_done(self, sid: int, task: asyncio.Task[None]) -> None:
        if self.tasks.get(sid) is task:
            del self.tasks[sid]
        self._flush()

    def _failed(self, request: Request) -> Plan:
        log.exception("answering %s %s for %s failed", request.method, request.target[:200], self.peer)
        return self.handler.refuse(500, "internal error")

    def _send(self, sid: int, request: Request | None, plan: Plan) -> None:
        """An answer whose body is in hand: queued whole (the shared bytes, by reference)."""
        body = plan.body
        assert type(body) is bytes or type(body) is memoryview, "a plan in hand carries its bytes"
        self.h2.respond(sid, request, plan.fields, body, plan.born, time.time())
        if request is not None:
            self._log(request, plan, len(body) if request.method != "HEAD" and plan.fields.status != 304 else 0)
        plan.close()

    async def _answer_later(self, sid: int, later: Later) -> None:
        request = later.request
        try:
            plan = await self.handler.answer_later(later)
        except Exception:  # noqa: BLE001 - the handler's bug fails this request only
            plan = self._failed(request)
        try:
            body = plan.body
            if type(body) is Stream:
                await self._send_stream(sid, request, plan, body)
            elif type(body) is FileRange:
                await self._send_file(sid, request, plan, body)
            else:
                self._send(sid, request, plan)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the stream was reset or the connection lost: nobody to answer
        except Exception:  # noqa: BLE001 - one stream's bug must not take the connection down
            log.exception("answering %s on HTTP/2 for %s failed", request.target[:200], self.peer)
            self.h2.reset(sid, ErrorCodes.INTERNAL_ERROR)
        finally:
            plan.close()

    async def _send_stream(self, sid: int, request: Request, plan: Plan, body: Stream) -> None:
        """An answer arriving from upstream: queued piece by piece as its stream drains."""
        h2 = self.h2
        h2.send_head(sid, request, plan.fields, plan.length, plan.born, time.time())
        sent = 0
        if h2.sends_body(sid):
            try:
                async for piece in body.chunks():
                    h2.send_data(sid, piece)
                    sent += len(piece)
                    self._flush()
                    await self._drained(sid)
            except BodyBroken:
                # Never let a truncated body pass for a whole one: the stream is reset, not ended.
                h2.reset(sid, ErrorCodes.INTERNAL_ERROR)
                self._log(request, plan, sent)
                return
        h2.end(sid)
        self._flush()
        self._log(request, plan, sent)

    async def _send_file(self, sid: int, request: Request, plan: Plan, body: FileRange) -> None:
        """A body the disk tier keeps as a file, read off the loop a step at a time."""
        h2 = self.h2
        count = body.stop - body.start
        h2.send_head(sid, request, plan.fields, count, plan.born, time.time())
        sends = h2.sends_body(sid)
        if sends and count:
            async for data in body.pieces(FILE_STEP):
                h2.send_data(sid, data)
                self._flush()
                await self._drained(sid)
        h2.end(sid)
        self._flush()
        self._log(request, plan, count if sends else 0)

    async def _drained(self, sid: int) -> None:
        """Wait until the stream's queue is under STREAM_BUFFER (raises if it is reset or stalls too long)."""
        if self.flow.lost:
            raise ConnectionResetError("player went away")
        if self.h2.queued(sid) <= STREAM_BUFFER:
            return
        waiter = self.waiters[sid] = self._loop.create_future()
        try:
            await asyncio.wait_for(waiter, STALL_TIMEOUT)
        except TimeoutError:
            self.h2.reset(sid, ErrorCodes.CANCEL)
            self._flush()
            raise ConnectionResetError(f"stream {sid} read nothing for {STALL_TIMEOUT:g} s") from None
        finally:
            if self.waiters.get(sid) is waiter:
                del self.waiters[sid]
        if self.flow.lost or not self.h2.sends_body(sid):
            raise ConnectionResetError(f"stream {sid} was reset")

    def _log(self, request: Request, plan: Plan, sent: int) -> None:
        """The answer counted for the metrics, and its one access line, as `PlayerConnection._log` does."""
        took = time.perf_counter() - request.received if request.received else 0.0
        cache = plan.cache.header if plan.cache is not None else ""
        tally = self.server.tally
        if tally is not None:
            tally.add(plan.fields.status, sent, took, cache or "NONE")
        if self.access is not None:
            h = request.header
            self.access.write(request.client or self.peer, request.method, request.target, plan.fields.status, sent,
                              took, cache, h(b"user-agent") or "", h(b"host") or "", h(b"referer") or "",
                              h(b"range") or "", "HTTP/2", request.rid or request_id(h(b"x-request-id")), plan.upstream)

    # --- writing: the one place frames become bytes ---

    def _flush(self) -> None:
        """Frames for the room the transport has, written; writers whose stream drained wake."""
        if self._closed:
            return
        h2, transport = self.h2, self.transport
        while True:
            # Room until the transport is over its high-water mark: then it has paused
            # writing and `resume_writing()` flushes again. While the kernel takes all
            # we write, frames are made for as long as windows and queues allow.
            h2.pump(HIGH_WATER + 1 - transport.get_write_buffer_size())
            data = h2.data_to_send()
            if not data:
                break
            transport.write(data)
        if self.waiters:
            for sid, waiter in list(self.waiters.items()):
                if h2.queued(sid) <= STREAM_BUFFER and not waiter.done():
                    waiter.set_result(None)
        if h2.ended:
            self._end()
        elif not h2.active:
            if h2.closing:
                self._end()  # drained: the last stream is done
            elif self._busy:
                self._busy = False
                self._went_idle()
        else:
            self._busy = True
            self._stall_check()

    def _stall_check(self) -> None:
        if self.h2.blocked():
            if self._stall_since is None:
                self._stall_since = self._loop.time()
                self._arm(self._stall_since + STALL_TIMEOUT)
        else:
            self._stall_since = None

    def _wake_all(self) -> None:
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(None)

    def _end(self) -> None:
        """The connection is over: h2's final GOAWAY (when not sent yet), flushed, then close."""
        if self._closed:
            return
        self.h2.finish()
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)
        for task in self.tasks.values():
            task.cancel()
        self._closed = True
        transport = self.transport
        if self.server.closing or not transport.can_write_eof():
            transport.close()  # flushes what is buffered first
            return
        # The GOAWAY, a FIN, then what the client still sends is read and dropped for
        # at most LINGER s: closing over unread bytes would reset the connection and
        # could destroy the GOAWAY (that says why) before the client reads it.
        transport.write_eof()
        self.flow.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(LINGER, transport.close)

    # --- time: one timer handle ---

    def _went_idle(self) -> None:
        self._stall_since = None
        self._idle_since = self._loop.time()
        self._arm(self._idle_since + self.server.keepalive_timeout)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._closed:
            return
        now, server = self._loop.time(), self.server
        if self.h2.active or self.tasks:
            since = self._stall_since
            if since is not None and self.h2.blocked():
                if now >= since + STALL_TIMEOUT:
                    log.info("HTTP/2 connection from %s read nothing for %.0f s: closed", self.peer, STALL_TIMEOUT)
                    self._end()
                    return
                self._arm(since + STALL_TIMEOUT)
            # Busy and not stalled: the next idle moment (`_flush`) arms the timer again.
            return
        deadline = self._idle_since + (server.keepalive_timeout if self._served else server.header_timeout)
        if now >= deadline:
            self._end()
            return
        self._arm(deadline)

    # --- shutdown (the server's) ---

    def shutdown(self) -> None:
        """Graceful: GOAWAY with the last stream id; streams in flight finish, then the connection closes."""
        if self._closed:
            return
        self.h2.start_closing()
        self._flush()

    def abort(self) -> asyncio.Task[None] | None:
        """Forceful: cancel every stream's answer and drop the connection."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        self.transport.abort()
        if not tasks:
            return None
        return self._loop.create_task(_gather(tasks))


async def _gather(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
