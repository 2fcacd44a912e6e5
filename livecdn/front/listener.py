"""The player listener: the one I/O shell around `http1.ServerConnection` and the front.

`PlayerServer` owns the listening socket(s), every open connection and the one
shutdown path (stop accepting, close idle keep-alive connections, let answers
in flight finish under one timeout, then close the rest). `PlayerConnection`
is an `asyncio.Protocol` per connection, and the only code that writes to a
player:

- bytes go to its `ServerConnection`; complete requests queue up, in order.
  Past `MAX_PENDING` queued requests the connection parses no more (the rest
  of a read waits in its backlog) and the listener stops reading until the
  queue drains.
- the `Handler` (the front) turns each request into a `Plan`; when it can do
  that without waiting (a memory hit), the answer is written right there in
  `data_received`, one `writelines` of a head built once per stored object and
  the body. Otherwise one task per connection answers it and every request
  queued behind it, so answers leave in the order the requests came. A
  pipeline longer than one batch is answered by that task too, yielding the
  loop after every `MAX_PENDING` answers: thousands of pipelined hits from
  one client wait their turn behind other players instead of holding the loop.
- after each answer the connection asks its `ServerConnection` whether it must
  close; an idle one waits for the next request under one `loop.call_at`
  handle, rescheduled rather than re-created per request.
- writing is flow-controlled by one `FlowControl` per connection (uvicorn's
  shape, shared with DNS over TCP): the transport's `pause_writing()` /
  `resume_writing()` flip it, and writers await its `drain()`, so a slow
  player holds back only its own coroutine. Once a client pipelines more
  than one batch, the kernel holds at most `UNSENT_LOW` unsent bytes for it,
  so a client that reads nothing gets a bounded share of answers, not every
  request it pipelined.
- connections per client address are counted here (`ConnectionLimit`): past
  the limit a connection gets a ready-made 429 before a byte is parsed; past
  `max_connections` in all (a bound on file descriptors), a ready-made 503.
- a connection that ends after an answer the client may not have read yet
  (a refusal, an error, a 408) closes gracefully: the answer, then a FIN,
  then whatever the client still sends is read and dropped for at most
  `LINGER` seconds, so the kernel never resets the connection over unread
  bytes and destroys the answer with it (Apache's lingering close).
- a request head must arrive whole within `header_timeout` of its first
  byte (else a 408), and a new connection must begin one within as long.
- behind load balancers: a listener with `proxy_protocol` accepts through a
  `ProxyAcceptor` (`proxyaccept.py`), which reads each connection's PROXY
  header before anything else, within the header timeout, and only then
  makes its `PlayerConnection` (under TLS, once the handshake is done), with
  the header's source as its peer; per-address connection limits count that
  address. A connection without a good header is closed and counted. A
  connection from a trusted proxy (`forwarded.ClientAddresses`) has each
  request's client read from its forwarding header; such a peer is exempt
  from the per-address connection limit (it carries many clients), not from
  `max_connections`.

Memory per connection is bounded by name whatever a client writes: one
incomplete head (`http1.MAX_HEAD_BYTES`), `http1.MAX_PENDING` parsed requests
(each a head within that bound), one read held unparsed (`backlog`: reading
is paused meanwhile, so at most the transport's read size), and what the
transport buffers toward the player (`HIGH_WATER`, past which writers wait).

The listener defines the interface it calls (`Handler`) and imports nothing
of the front that implements it. HTTP/2 is a second shell over the same
handler and plans (`listener_h2.Http2Connection`): a connection becomes one
when TLS negotiated ALPN "h2", or, with `h2c` on, when its first bytes are
the HTTP/2 preface (prior knowledge, as nghttp, h2load and
`curl --http2-prior-knowledge` send it; no HTTP/1.1 request begins so).
HTTP/1.1's `Upgrade: h2c` is not offered: browsers never use it, and every
HTTP/2 client that speaks cleartext knows the prior-knowledge form.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import time
from collections.abc import Callable
from ssl import SSLContext
from typing import Protocol

from livecdn.logs import AccessLog, request_id
from livecdn.metrics import MAX_TALLIED, Tally

from .connlimit import MAX_LINGERING, OVERLOADED, REFUSAL, ConnectionLimit
from .flow import HIGH_WATER, LINGER, FlowControl
from .forwarded import ClientAddresses
from .http1 import MAX_PENDING, NEED_DATA, PARSE_SLICE, ProtocolError, ServerConnection
from .http2 import PREFACE
from .listener_h2 import Http2Connection
from .plan import BodyBroken, FileRange, Later, Plan, Stream
from .proxyaccept import ProxyAcceptor
from .request import Request

__all__ = ["FILE_CHUNK", "HANDSHAKE_TIMEOUT", "HEADER_TIMEOUT", "HIGH_WATER", "Handler", "KEEPALIVE_TIMEOUT", "LINGER",
           "PlayerConnection", "PlayerServer"]

log = logging.getLogger("livecdn.front.listener")

# Bytes of answers the kernel may hold unsent for a client that pipelines more
# than one batch (TCP_NOTSENT_LOWAT): past it a write blocks and the
# transport's own buffer, then `pause_writing`, take over. Without it the
# kernel's autotuned send buffer (up to tcp_wmem's 4 MiB) swallowed thousands
# of pipelined answers per client that never reads, each costing the loop its
# work (issue 12: /healthz 218 ms behind 100 such clients). Only such clients:
# on every connection it cost 1 MiB segment hits more wake-ups per body.
UNSENT_LOW = 128 << 10
# Answers one connection's task gives per turn of the loop when a client
# pipelines more than one read's worth: with 100 such clients a turn costs
# 100 × TURN answers before anyone else is served.
TURN = 4
# Reading resumes once the queue of parsed requests (at most MAX_PENDING,
# see http1) is down to this and nothing waits unparsed.
RESUME_PIPELINED = 4
# How long a kept-alive connection may sit without a request (aiohttp's default).
KEEPALIVE_TIMEOUT = 75.0
# How long a request head may take from its first byte (and a new connection
# to send one): players send a head in one packet (LimitSettings.header_timeout).
HEADER_TIMEOUT = 10.0
# How long a TLS handshake may take from the connection's start: as long as a request head, so a client
# that opens connections and never handshakes holds each no longer than one that never sends a byte.
HANDSHAKE_TIMEOUT = HEADER_TIMEOUT
# How long a drain waits for a connection that has sent nothing yet: a new
# connection's request is usually on its way (the client connected a moment
# ago), and closing it unread loses that request (the takeover of issue 14 lost
# 1-2 in 7,500 that way). Its one answer says "Connection: close".
SILENT_GRACE = 1.0
# Bytes read from a disk-tier file per step where the loop has no sendfile
# (uvloop): one step is written and drained before the next is read.
FILE_CHUNK = 256 << 10


# The HTTP state of every connection that has not sent a byte yet, shared: a
# connection makes its own at its first read, so one that stays idle (the
# 20,000 of issue 12) costs no parser, queue or buffer. Never fed, never
# answered on, never closed (`_linger` and `shutdown` check for it).
_SILENT = ServerConnection()


class Handler(Protocol):
    """What answers requests for the listener (`livecdn.front.answers.PlayerFront`)."""

    def answer_now(self, request: Request, peer: str, now: float) -> Plan | Later:
        """A plan whose body is in hand, or `Later` when answering needs waiting (`now`: the wall clock)."""

    async def answer_later(self, later: Later) -> Plan:
        """The plan for a request `answer_now` could not answer at once."""

    def refuse(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Plan:
        """A plain error answer (bytes that were no request, or a handler that failed)."""


class PlayerServer:
    """The player listener of one node process; the protocol factory of its sockets.

    Args:
        handler: answers requests (the front).
        keepalive_timeout: seconds an idle kept-alive connection stays open.
        header_timeout: seconds from a request head's first byte to its end (then a 408), and
            from a connection's start to its first byte (then it closes).
        max_connections: player connections this process holds at most (None: no bound), those
            closing included; past it a new connection gets a 503 (`connlimit.OVERLOADED`).
        connection_limit: open connections per client address, or None.
        access_log: where one line per answer goes, or None.
        h2c: whether a plain connection that begins with the HTTP/2 preface is served HTTP/2.
        addresses: which peers are trusted proxies and which header names their clients; None: none.
        proxy_protocol: every connection must begin with a PROXY header (v1 or v2), read before TLS.
        tally: where each answer is counted for the metrics (status, bytes, seconds), or None.

    Raises:
        ValueError: a timeout is not positive or `max_connections` is below 1 (the message names it).
    """

    __slots__ = ("handler", "keepalive_timeout", "header_timeout", "max_connections", "connection_limit",
                 "access", "h2c", "addresses", "proxy_protocol", "tally", "connections", "lingering", "refused",
                 "closing", "_servers", "_acceptors", "_all_closed")

    def __init__(self, handler: Handler, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, max_connections: int | None = None,
                 connection_limit: ConnectionLimit | None = None, access_log: AccessLog | None = None,
                 h2c: bool = True, addresses: ClientAddresses | None = None,
                 proxy_protocol: bool = False, tally: Tally | None = None) -> None:
        for name, value in (("keepalive_timeout", keepalive_timeout), ("header_timeout", header_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        self.handler = handler
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.connection_limit = connection_limit
        self.access = access_log
        self.h2c = h2c
        self.addresses = addresses if addresses else None  # None: no peer is trusted (one check per connection)
        self.proxy_protocol = proxy_protocol
        self.tally = tally
        self.connections: set[PlayerConnection | Http2Connection] = set()
        # Refused connections closing gracefully (not in `connections`): at most MAX_LINGERING.
        self.lingering: set[PlayerConnection] = set()
        self.refused = 0  # connections refused for `max_connections` (per address: `connection_limit`)
        self.closing = False  # shutdown began
        self._servers: list[asyncio.Server] = []  # one per address: plain, TLS
        self._acceptors: list[ProxyAcceptor] = []  # instead of `_servers`, with `proxy_protocol`
        self._all_closed: asyncio.Future[None] | None = None

    def __call__(self) -> PlayerConnection:
        return PlayerConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024,
                    ssl: SSLContext | None = None, handler: Handler | None = None) -> int:
        """Listen on one more address: plain, or TLS with `ssl` (under a PROXY header: after it);
        `handler` answers there instead of `handler`.

        Every address shares this server's connections and bounds (a client's
        connections count once whichever port they came in on) and its shutdown.

        Returns:
            The port actually bound (so port 0 works).
        """
        if self.closing:
            raise RuntimeError("player server is shutting down")
        if self.proxy_protocol:
            acceptor = ProxyAcceptor(lambda source, _: PlayerConnection(self, handler, source),
                                     lambda: self.header_timeout, self._proxy_capacity, ssl=ssl)
            acceptor.open(host, port, reuse_port=reuse_port, backlog=backlog)
            self._acceptors.append(acceptor)
            return acceptor.port
        factory: Callable[[], PlayerConnection] = self if handler is None else \
            functools.partial(PlayerConnection, self, handler)
        server = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_port=reuse_port or None, backlog=backlog, ssl=ssl,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ssl is not None else None)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def start_unix(self, path: str, *, backlog: int = 1024) -> None:
        """Listen on a Unix stream socket at `path` too (a node's sibling workers ask there): plain HTTP/1.1."""
        if self.closing:
            raise RuntimeError("player server is shutting down")
        self._servers.append(await asyncio.get_running_loop().create_unix_server(self, path, backlog=backlog))

    def _proxy_capacity(self) -> bool:
        """Room for one more connection whose PROXY header is still to come (`max_connections`)."""
        if self.max_connections is not None and self.open >= self.max_connections:
            self.refused += 1
            return False
        return True

    @property
    def port(self) -> int:
        """The port first bound (so port 0 works)."""
        if self._acceptors:
            return self._acceptors[0].port
        if not self._servers or not self._servers[0].sockets:
            raise RuntimeError("player server is not listening")
        return int(self._servers[0].sockets[0].getsockname()[1])

    @property
    def refused_proxy(self) -> int:
        """Connections closed for a missing, bad or late PROXY header (or a failed TLS handshake after one)."""
        return sum(a.refused for a in self._acceptors)

    @property
    def open(self) -> int:
        """Player connections this process holds now (those closing, and those awaiting a PROXY header, included)."""
        pending = sum(a.pending for a in self._acceptors)
        return len(self.connections) + len(self.lingering) + pending

    def closed(self, conn: PlayerConnection | Http2Connection) -> None:
        self.connections.discard(conn)
        self.lingering.discard(conn)
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, end idle connections, let answers in flight finish, close the rest.

        Safe to call twice.
        """
        self.closing = True
        while self._servers:
            self._servers.pop().close()
        for acceptor in self._acceptors:
            await acceptor.close()  # kept: `port` and `refused_proxy` stay readable
        # Connections the loop accepted before the sockets closed are made on its next turn
        # (`connection_made` is scheduled): they are drained like the others, not dropped at exit.
        await asyncio.sleep(0)
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_closed), timeout)
            except TimeoutError:
                log.warning("%d player connections still busy after %.1f s: closing them",
                            len(self.connections), timeout)
        tasks = [t for t in (c.abort() for c in [*self.connections, *self.lingering]) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class PlayerConnection(asyncio.Protocol):
    """One player connection: requests in, answers out, in order, at the player's pace."""

    __slots__ = ("server", "handler", "access", "tally", "timed", "transport", "peer", "h1", "task", "_loop",
                 "_counted", "flow", "_idle_since", "_head_since", "_timer", "_eof", "_lingering", "_unsent_bounded",
                 "_forwards")

    def __init__(self, server: PlayerServer, handler: Handler | None = None, peer: str = "") -> None:
        """`handler`: the address's own (`PlayerServer.start`); `peer`: the client a PROXY header named
        (`proxyaccept`), "": the socket's peer."""
        self.server = server
        self.handler = server.handler if handler is None else handler  # an address's own (`PlayerServer.start`)
        self.access = server.access
        self.tally = server.tally
        self.timed = self.access is not None or self.tally is not None  # each answer is timed and told
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.h1 = _SILENT  # its own at the first read (`data_received`)
        self.task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._counted = False
        self.flow: FlowControl  # made with the transport, in connection_made
        self._idle_since = 0.0
        # When a read last left a request head incomplete; before `_idle_since`: not since the last answer
        # (so that answering resets nothing on the hit path).
        self._head_since = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False  # the player half-closed: close once its requests are answered
        self._lingering = False  # closing gracefully: the last answer and a FIN sent, reads dropped
        self._unsent_bounded = False  # TCP_NOTSENT_LOWAT set (`_bound_unsent`)
        self._forwards = False  # the peer is a trusted proxy: each request names its client

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]
        server = self.server
        if not self.peer:  # (a PROXY header's: the acceptor found room for it when it took the socket)
            peername = transport.get_extra_info("peername")
            self.peer = str(peername[0]) if peername else ""
            if server.max_connections is not None and server.open >= server.max_connections:
                server.refused += 1
                self._refuse(OVERLOADED)
                return
        if not self._admit():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # answers are whole heads plus bodies: never wait to coalesce
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[union-attr]
        server.connections.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._to_http2(b"")  # TLS negotiated HTTP/2 (asyncio calls this after the handshake)
            return
        self._idle_since = self._loop.time()
        if server.closing:  # accepted just before the drain closed the sockets
            self.shutdown()
            return
        # A new connection must begin a request within the header timeout (`_idle_check`); the
        # timer first fires at the sooner of the two timeouts, as it is not re-armed per answer.
        self._timer = self._loop.call_at(self._idle_since + min(server.header_timeout, server.keepalive_timeout),
                                         self._idle_check)

    def _to_http2(self, data: bytes) -> None:
        """Hand the transport, its place in the server's books and what it read to an HTTP/2 connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        h2 = Http2Connection(self.server, self.transport, self.peer, self._counted,  # type: ignore[arg-type]
                             self.handler)
        self._counted = False  # the HTTP/2 connection releases the address's count
        self.server.connections.discard(self)
        self.server.connections.add(h2)
        self.transport.set_protocol(h2)  # type: ignore[union-attr]
        h2.start(data)
    def _admit(self) -> bool:
        """Count the connection against its address's limit (a trusted proxy's is not); False: refused."""
        addresses, limit = self.server.addresses, self.server.connection_limit
        self._forwards = addresses is not None and addresses.trusts(self.peer)
        if limit is not None and not self._forwards:
            if not limit.opened(self.peer):
                self._refuse(REFUSAL)
                return False
            self._counted = True
        return True

    def _refuse(self, answer: bytes) -> None:
        """A ready-made refusal before a byte is parsed, then a graceful close while there is room for one."""
        self.transport.write(answer)  # type: ignore[union-attr]
        if len(self.server.lingering) >= MAX_LINGERING:
            self.transport.close()  # type: ignore[union-attr]  # at once: closing costs no more descriptors
            return
        self.server.lingering.add(self)
        self._linger()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            assert self.server.connection_limit is not None
            self.server.connection_limit.closed(self.peer)
        self.flow.connection_lost()  # writers waiting in drain() wake and raise
        self.h1.events.clear()
        self.h1.backlog.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.task is not None:
            self.task.cancel()  # the answer has nobody to go to; shared fetches go on without it
        self.server.closed(self)

    def data_received(self, data: bytes) -> None:
        h1 = self.h1
        if h1 is _SILENT:
            if self._lingering:
                return  # a refused connection: what it sends is dropped
            if self.server.h2c and len(data) >= 3 and PREFACE.startswith(data[:len(PREFACE)]):
                self._to_http2(data)  # HTTP/2 with prior knowledge: "PRI" begins no request we serve
                return
            h1 = self.h1 = ServerConnection(last=self.server.closing)  # first bytes during a drain: one answer
        if h1.backlog or len(data) > PARSE_SLICE:
            h1.receive_data(data)  # parsed as far as the queue's bound, the rest held
        else:
            h1.parse(data)  # a small read: at most a slice of requests past the bound, then reading pauses
        if self.task is None and h1.events:
            self._answer_ready()
        elif self._head_since < self._idle_since and not h1.events:
            self._head_started()
        if h1.backlog or len(h1.events) >= MAX_PENDING:
            self.flow.pause_reading()

    def eof_received(self) -> bool | None:
        # The player half-closed: answer what it asked for, then close (return
        # False). With nothing pending (or lingering: its answer is out), close now.
        if self._lingering or (self.task is None and not self.h1.events and not self.h1.backlog):
            return False
        self._eof = True
        return True

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # --- answering, in order ---

    def _answer_ready(self) -> None:
        """Answer queued requests synchronously while the handler can; hand the rest to a task.

        This is the hit path: one request, one plan, one `writelines`.
        """
        h1, handler, transport, timed, flow, tally = self.h1, self.handler, self.transport, self.timed, self.flow, \
            self.tally
        events = h1.events  # taken from directly: `next_event()` without its call, on the hit path
        while not h1.must_close:
            if not events:
                if h1.backlog:
                    # More pipelined than one batch: the rest is answered in turn with
                    # other connections (`_answer_in_order`), never all in this call,
                    # and only as fast as the client reads.
                    self._bound_unsent()
                    self._start_task(None)
                    return
                break
            if flow.writing_paused or flow.lost:
                self._start_task(None)
                return
            event = events.popleft()
            if type(event) is ProtocolError:
                self._send(None, handler.refuse(event.status, event.reason, event.headers))
                break
            if timed:
                event.received = time.perf_counter()  # type: ignore[union-attr]
            now = time.time()
            try:
                plan = handler.answer_now(event, self._client(event) if self._forwards else self.peer,  # type: ignore
                                          now)
            except Exception:  # noqa: BLE001 - one request's bug must not wedge the connection
                plan = self._failed(event)  # type: ignore[arg-type]
            if type(plan) is Later:
                self._start_task(plan)
                return
            fields = plan.fields  # type: ignore[union-attr]
            buffers = h1.respond(event, fields, plan.body, plan.born, now)  # type: ignore
            transport.writelines(buffers)  # type: ignore[union-attr]
            if timed:
                # `_log` without its call: the answer's lane found by its fields (see `Tally`).
                took = time.perf_counter() - event.received  # type: ignore[union-attr]
                sent = len(buffers[1]) if len(buffers) > 1 else 0
                if tally is not None:
                    lane = tally.lanes.get(fields)
                    if lane is None:
                        cache = plan.cache  # type: ignore[union-attr]
                        lane = tally.lane_of(fields, fields.status, cache.header if cache is not None else "NONE")
                    lane.append(took)
                    tally.sent += sent
                    if len(lane) >= MAX_TALLIED:
                        tally.flush()
                if self.access is not None:
                    self._access_line(event, plan, sent, took)  # type: ignore[arg-type]
            if plan.release is not None:  # type: ignore[union-attr]
                plan.close()  # type: ignore[union-attr]
        if h1.must_close or self._eof or flow.reading_paused or self._timer is None:
            self._answered()
        else:
            self._idle_since = self._loop.time()  # `_answered()` of a kept connection whose timer is armed

    def _failed(self, request: Request) -> Plan:
        log.exception("answering %s %s for %s failed", request.method, request.target[:200], self.peer)
        return self.handler.refuse(500, "internal error")

    def _plan(self, request: Request) -> Plan | Later:
        if self.timed:
            request.received = time.perf_counter()
        try:
            return self.handler.answer_now(request, self._client(request) if self._forwards else self.peer,
                                           time.time())
        except Exception:  # noqa: BLE001 - one request's bug must not wedge the connection
            return self._failed(request)

    def _client(self, request: Request) -> str:
        """The client a trusted proxy names for this request."""
        return self.server.addresses.client_of(self.peer, request)  # type: ignore[union-attr]  # `_forwards`

    def _send(self, request: Request | None, plan: Plan) -> None:
        """Write an answer whose body is in hand."""
        buffers = self.h1.respond(request, plan.fields, plan.body, plan.born, time.time())  # type: ignore[arg-type]
        self.transport.writelines(buffers)  # type: ignore[union-attr]
        if self.timed and request is not None:
            self._log(request, plan, len(buffers[1]) if len(buffers) > 1 else 0)
        plan.close()

    def _bound_unsent(self) -> None:
        if not self._unsent_bounded:
            self._unsent_bounded = True
            sock = self.transport.get_extra_info("socket")  # type: ignore[union-attr]
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_LOW)

    def _start_task(self, first: Later | None) -> None:
        self.task = self._loop.create_task(self._answer_in_order(first))

    async def _answer_in_order(self, first: Later | None) -> None:
        h1 = self.h1
        try:
            if first is not None:
                await self._answer_later(first)
            turn = 0
            while not h1.must_close and not self.flow.lost:
                self._maybe_resume_reading()
                await self.flow.drain()
                turn += 1
                if turn % TURN == 0:
                    # A client's pipeline of answers in hand (hits, 404s) would otherwise hold the
                    # loop for all of its thousands: other players and /healthz get a turn per batch.
                    if h1.backlog:
                        self._bound_unsent()  # a pipeline behind a miss: bounded as in `_answer_ready`
                    await asyncio.sleep(0)
                event = h1.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is ProtocolError:
                    self._send(None, self.handler.refuse(event.status, event.reason, event.headers))
                    break
                plan = self._plan(event)  # type: ignore[arg-type]
                if type(plan) is Later:
                    await self._answer_later(plan)
                else:
                    self._send(event, plan)  # type: ignore[arg-type]
        except (ConnectionError, asyncio.CancelledError):
            self._cut()
        except Exception:  # noqa: BLE001 - one connection's bug must not take the listener down
            log.exception("answering %s failed", self.peer)
            self._cut()
        finally:
            self.task = None
        if not self.flow.lost:
            self._answered()

    async def _answer_later(self, later: Later) -> None:
        try:
            plan = await self.handler.answer_later(later)
        except Exception:  # noqa: BLE001 - the handler's bug fails this request only
            plan = self._failed(later.request)
        try:
            body = plan.body
            if type(body) is Stream:
                await self._send_stream(later.request, plan, body)
            elif type(body) is FileRange:
                await self._send_file(later.request, plan, body)
            else:
                if self.flow.lost:
                    raise ConnectionResetError("player went away")
                self._send(later.request, plan)
        finally:
            plan.close()

    async def _send_stream(self, request: Request, plan: Plan, body: Stream) -> None:
        """An answer arriving from upstream: written piece by piece at the player's pace."""
        h1 = self.h1
        # The head goes out with the first body bytes: one send per client, not two, on a fan-out of
        # hundreds (a head alone is of no use to a player); alone only when no body byte follows.
        head = h1.send_head(request, plan.fields, plan.length, plan.born, time.time())
        unsent = [head] if head else []
        if h1.sends_body:
            transport, flow = self.transport, self.flow

            def push(piece: memoryview) -> bool:
                """Write a piece (the head first, once); may the next follow without waiting for a drain?

                The fill's dispatch calls it for bytes that arrive while the player keeps up (no task wake);
                the task below for the rest. A lost connection is written nothing: `drain` then raises.
                """
                if flow.lost:
                    return False
                framed = h1.send_data(piece)
                transport.writelines((unsent.pop(), *framed) if unsent else framed)  # type: ignore[union-attr]
                return not flow.writing_paused

            try:
                async for piece in body.chunks(push):
                    if piece:  # else `push` filled the transport: drain it
                        push(piece)
                    await flow.drain()
            except BodyBroken:
                if unsent:
                    self._write(unsent.pop())
                # Never let a truncated body pass for a whole one: cut the connection.
                h1.send_failed()
                self._cut()
                self._log(request, plan, body.sent)
                return
        if unsent:
            self._write(unsent.pop())
        end = h1.send_end()
        if end:
            self._write(end)
        self._log(request, plan, body.sent if h1.sends_body else 0)

    async def _send_file(self, request: Request, plan: Plan, body: FileRange) -> None:
        """A body the disk tier keeps as a file: the head, then sendfile (or reads off the loop)."""
        h1 = self.h1
        count = body.stop - body.start
        self._write(h1.send_head(request, plan.fields, count, plan.born, time.time()))
        if h1.sends_body and count:
            transport = self.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("player went away")
            try:
                await self._loop.sendfile(transport, body.file, body.start, count, fallback=False)
            except (NotImplementedError, RuntimeError, asyncio.SendfileNotAvailableError):
                # uvloop has no loop.sendfile: read the file off the loop, write at the player's pace.
                async for data in body.pieces(FILE_CHUNK):
                    self._write(data)
                    await self.flow.drain()
        h1.send_end()
        self._log(request, plan, count if h1.sends_body else 0)

    def _log(self, request: Request, plan: Plan, sent: int) -> None:
        """The answer counted for the metrics, and its one access line (when the node keeps them)."""
        took = time.perf_counter() - request.received if request.received else 0.0
        if self.tally is not None:
            self.tally.add(plan.fields.status, sent, took, plan.cache.header if plan.cache is not None else "NONE")
        if self.access is not None:
            self._access_line(request, plan, sent, took)

    def _access_line(self, request: Request, plan: Plan, sent: int, took: float) -> None:
        assert self.access is not None
        h = request.header
        self.access.write(request.client or self.peer, request.method, request.target, plan.fields.status,
                          sent, took, plan.cache.header if plan.cache is not None else "", h(b"user-agent") or "",
                          h(b"host") or "", h(b"referer") or "", h(b"range") or "", f"HTTP/{request.version}",
                          request.rid or request_id(h(b"x-request-id")), plan.upstream)

    def _write(self, data: bytes | memoryview) -> None:
        if self.flow.lost:
            raise ConnectionResetError("player went away")
        self.transport.write(data)  # type: ignore[union-attr]

    def _write_all(self, data: tuple[bytes | memoryview, ...]) -> None:
        if self.flow.lost:
            raise ConnectionResetError("player went away")
        self.transport.writelines(data)  # type: ignore[union-attr]

    # --- what follows the last answer: the one place that decides ---

    def _answered(self) -> None:
        """Every queued request is answered: close if the connection must end, else read and idle."""
        if self.h1.must_close or self._eof:
            if self._eof or self.server.closing:
                self._close()  # nothing more can come, or the node is stopping: no lingering
            else:
                self._linger()  # the client may have sent more than we read: let it read its answer first
            return
        if self.flow.reading_paused:
            self._maybe_resume_reading()
        self._went_idle()

    def _close(self) -> None:
        self.h1.events.clear()
        self.h1.backlog.clear()
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first

    def _linger(self) -> None:
        """Close gracefully: a FIN once the answer is flushed, then read and drop for at most LINGER s.

        Closing a socket with unread bytes makes the kernel answer with a
        reset, which can destroy the answer before the client reads it (the
        429 at the per-address cap was lost that way 28-42 times in 50).
        """
        if self.h1 is not _SILENT:
            self.h1.discard()
        transport = self.transport
        if self._lingering or transport is None or transport.is_closing():
            return
        self._lingering = True
        if self._timer is not None:
            self._timer.cancel()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()  # what the client still sends is read (and dropped), not left unread
        self._timer = self._loop.call_later(LINGER, transport.close)

    def _cut(self) -> None:
        """End the connection at once (a body that broke must not pass for a whole one)."""
        self.h1.send_failed()
        if self.transport is not None:
            self.transport.abort()

    def _maybe_resume_reading(self) -> None:
        if self.flow.reading_paused and not self.h1.backlog and len(self.h1.events) <= RESUME_PIPELINED:
            self.flow.resume_reading()

    # --- keep-alive: one timer handle, rescheduled ---

    def _went_idle(self) -> None:
        self._idle_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._idle_since + self.server.keepalive_timeout, self._idle_check)

    def _head_started(self) -> None:
        """A read left a request head incomplete: it has `header_timeout` from now to end."""
        if self._lingering or self.task is not None or self.flow.lost:
            return  # closing, or busy answering (`_went_idle()` follows)
        self._head_since = now = self._loop.time()
        deadline = now + self.server.header_timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        h1 = self.h1
        if self.flow.lost or self._lingering or self.task is not None or h1.events or h1.backlog:
            return  # busy: the next `_went_idle()` arms the timer again
        server, now = self.server, self._loop.time()
        if self._head_since >= self._idle_since or h1.head_started:
            # Since the head's first read, or since the last answer for one pipelined behind it.
            deadline = max(self._head_since, self._idle_since) + server.header_timeout
            if now >= deadline:
                self._send(None, self.handler.refuse(
                    408, f"request head not complete within {server.header_timeout:g} s"))
                self._linger()
                return
        else:  # silent since it opened (not a byte yet), or idle since its last answer
            if h1 is _SILENT and server.closing:  # the drain's grace is over (`shutdown` armed this check)
                self._close()
                return
            deadline = self._idle_since + (server.header_timeout if h1 is _SILENT else server.keepalive_timeout)
            if now >= deadline:
                self._close()
                return
        self._timer = self._loop.call_at(deadline, self._idle_check)

    # --- shutdown ---

    def shutdown(self) -> None:
        """Graceful: an idle connection closes now, a busy one after the answer in flight, a silent one
        after its first answer or SILENT_GRACE."""
        if self.h1 is _SILENT:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(min(SILENT_GRACE, self.server.header_timeout), self._idle_check)
            return
        self.h1.start_closing()
        if self.task is None and not self.h1.events and not self.h1.backlog:
            self._close()

    def abort(self) -> asyncio.Task[None] | None:
        """Forceful: cancel the answer in flight, drop the connection; returns the task to await."""
        task = self.task
        if task is not None:
            task.cancel()
        if self.transport is not None:
            self.transport.abort()
        return task
