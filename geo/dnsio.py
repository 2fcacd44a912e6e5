"""The I/O shell around the sans-io `geo/dns.py`: DNS over UDP and TCP on one port.

Both sides are thin: UDP reads its socket itself (`DnsUdp`, many datagrams
per wake-up), TCP is an asyncio protocol (`DnsTcp`); each hands every message
to an `answer(message, client, over_udp)` callable (`Answerer.answer`) and
sends back what it returns; nothing here decides what to answer.
`DnsListener` binds the UDP endpoint and its TCP twin, and owns the open TCP
connections through a `TcpConnections` registry that each connection asks to
join and leave, so no connection reaches into its listener.

No client can hold the TCP side for others: one address (in IPv6, one /64)
gets at most `MAX_TCP_PER_CLIENT` of the `MAX_TCP_CONNECTIONS` places, and a
message must arrive whole within `TCP_MESSAGE_TIMEOUT` of its first byte
(bytes that trickle in do not restart the clock; only an answered message
does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable

from livecdn.front.flow import FlowControl

__all__ = ["DNS_BIND_ATTEMPTS", "MAX_TCP_CONNECTIONS", "MAX_TCP_PER_CLIENT", "TCP_IDLE_TIMEOUT",
           "TCP_MESSAGE_TIMEOUT", "Answer", "DnsListener", "DnsTcp", "DnsUdp", "TcpConnections", "share_of"]

log = logging.getLogger("livecdn.geo")

# RFC 7766 asks servers to close idle DNS-over-TCP connections after seconds,
# not minutes; the cap bounds what a flood of idle connections can hold.
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 1024
# One address's share of those: a sixteenth, so one client (or one resolver's
# egress) cannot take them all; a resolver needs a handful (RFC 7766 6.2.2).
MAX_TCP_PER_CLIENT = 64
# From a message's first byte to its last: 64 KiB at most, seconds are plenty;
# a client dripping bytes is closed then, whatever it still sends.
TCP_MESSAGE_TIMEOUT = 2.0
# With port 0 the kernel picks the UDP port, and its TCP twin may be taken:
# pick again this many times before giving up.
DNS_BIND_ATTEMPTS = 20
# Datagrams read per readable event before the loop gets a turn (TCP, health checks, HTTP).
UDP_BATCH = 64
# The largest datagram read: more than any EDNS payload a client may offer (its bytes past that are truncated,
# and the message is then malformed: FORMERR).
UDP_READ = 65535

# (wire message, client address, over UDP) -> wire reply, or None for no reply.
Answer = Callable[[bytes, str, bool], bytes | None]


def share_of(peer: str) -> str:
    """Whose share a connection from `peer` counts against: its IPv4 address, or its IPv6 /64.

    A /64 is what one IPv6 host or site is given: its addresses are one client.
    """
    if ":" not in peer:
        return peer
    address = ipaddress.IPv6Address(peer.split("%", 1)[0])
    if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class TcpConnections:
    """The open DNS-over-TCP connections of one listener: at most `limit`, `per_client` from one address."""

    __slots__ = ("limit", "per_client", "_open", "_by_client")

    def __init__(self, limit: int = MAX_TCP_CONNECTIONS, per_client: int = MAX_TCP_PER_CLIENT) -> None:
        if limit < 1 or per_client < 1:
            raise ValueError(f"limits must be at least 1, got {limit!r} and {per_client!r} per client")
        self.limit = limit
        self.per_client = per_client
        self._open: set[DnsTcp] = set()
        self._by_client: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._open)

    def join(self, conn: DnsTcp) -> bool:
        """Count `conn` in; False when the listener, or its client's share, is full (it then closes)."""
        client = share_of(conn.peer)
        if len(self._open) >= self.limit or self._by_client[client] >= self.per_client:
            return False
        self._open.add(conn)
        self._by_client[client] += 1
        return True

    def leave(self, conn: DnsTcp) -> None:
        if conn in self._open:
            self._open.remove(conn)
            client = share_of(conn.peer)
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]  # the table holds only clients with connections

    def close_all(self) -> None:
        for conn in list(self._open):
            conn.close()


class DnsUdp:
    """DNS over UDP on a socket of its own: one datagram in, at most one out, many per wake-up.

    Not an asyncio datagram transport: on each readable event the socket is
    read until it is empty (at most `UDP_BATCH` datagrams, then the loop has a
    turn) and each reply is sent at once, so a busy resolver's queries cost
    one wake-up per batch instead of one per query, and no transport or
    protocol call stands between the socket and `answer`. A reply the kernel
    cannot take right now (its send buffer full) is dropped and counted, as
    a lost datagram: the client asks again. An answerer bug drops that
    message, never the endpoint.
    """

    __slots__ = ("answer", "sock", "unsent", "_loop")

    def __init__(self, answer: Answer, sock: socket.socket) -> None:
        self.answer = answer
        self.sock = sock
        self.unsent = 0  # replies the socket would not take (EAGAIN) or could not send
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def bind(cls, answer: Answer, host: str, port: int) -> DnsUdp:
        """The endpoint on a UDP socket bound to (host, port), the first address `host` resolves to."""
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            if port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            return cls(answer, sock)
        except BaseException:
            sock.close()
            raise

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _readable(self) -> None:
        sock, answer = self.sock, self.answer
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(UDP_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier reply (client gone): nothing to do, keep serving
                continue
            try:
                reply = answer(data, addr[0], True)
            except Exception:
                log.exception("DNS answer failed for a %d-byte message from %s", len(data), addr[0])
                continue
            if reply is not None:
                try:
                    sock.sendto(reply, addr)
                except OSError:  # EAGAIN (send buffer full) or the client's address unreachable: a lost datagram
                    self.unsent += 1

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class DnsTcp(asyncio.Protocol):
    """DNS over TCP (RFC 7766): length-prefixed messages, pipelined, idle connections closed.

    One timer closes the connection: `TCP_IDLE_TIMEOUT` after the last answer
    while no message is begun, `TCP_MESSAGE_TIMEOUT` after a message's first
    byte while it is incomplete. A client that does not read its answers stops
    being read: while the transport's write buffer is over its high-water
    mark, reading is paused, and the client has `TCP_IDLE_TIMEOUT` to read.
    """

    __slots__ = ("connections", "answer", "transport", "flow", "peer", "buffer", "idle")

    def __init__(self, connections: TcpConnections, answer: Answer) -> None:
        self.connections = connections
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")[0]
        if not self.connections.join(self):
            transport.close()
            return
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]
        self._arm(TCP_IDLE_TIMEOUT)

    def _arm(self, seconds: float) -> None:
        # One rescheduled timer per connection, not one per message.
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(seconds, self.close)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        begun = not buf  # this data begins a message: its clock starts
        buf += data
        # At most one partial message stays buffered: its 2-byte length caps it at 64 KiB.
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                break
            message = bytes(buf[2:2 + size])
            del buf[:2 + size]
            try:
                reply = self.answer(message, self.peer, False)
            except Exception:
                log.exception("DNS answer failed for a %d-byte TCP message from %s", size, self.peer)
                reply = None
            if reply is None:
                # A message we cannot answer ends the conversation (RFC 7766 §7).
                self.close()
                return
            assert self.transport is not None
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
            begun = True  # answered: what follows is a new message
        if begun and (self.flow is None or not self.flow.reading_paused):
            self._arm(TCP_MESSAGE_TIMEOUT if buf else TCP_IDLE_TIMEOUT)

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()
            self.flow.pause_reading()
            self._arm(TCP_IDLE_TIMEOUT)  # not read while it does not read: its turn to be slow

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()
            self.flow.resume_reading()
            self._arm(TCP_MESSAGE_TIMEOUT if self.buffer else TCP_IDLE_TIMEOUT)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.flow is not None:
            self.flow.connection_lost()
        self.connections.leave(self)


class DnsListener:
    """DNS on one port, UDP and TCP: bound by `open()`, released by `close()`.

    Args:
        answer: what turns a query into a reply (`Answerer.answer`).
    """

    __slots__ = ("answer", "connections", "_udp", "_tcp")

    def __init__(self, answer: Answer, connections: TcpConnections | None = None) -> None:
        self.answer = answer
        self.connections = connections if connections is not None else TcpConnections()
        self._udp: DnsUdp | None = None
        self._tcp: asyncio.AbstractServer | None = None

    async def open(self, host: str, port: int) -> int:
        """Bind UDP, then TCP on the same port.

        Returns:
            The port bound (the kernel's pick when `port` is 0).

        Raises:
            OSError: the port cannot be bound (with port 0: not within `DNS_BIND_ATTEMPTS` picks).
        """
        loop = asyncio.get_running_loop()
        attempts = 0
        while True:
            attempts += 1
            # SO_REUSEPORT on a named port: a new router process binds beside the old one, which then
            # drains (a port 0 pick must stay this process's own).
            udp = DnsUdp.bind(self.answer, host, port)
            bound = udp.port
            try:
                self._tcp = await loop.create_server(lambda: DnsTcp(self.connections, self.answer), host, bound,
                                                     reuse_address=True, reuse_port=bool(port) or None,
                                                     backlog=1024)
            except OSError:
                udp.close()
                if port or attempts >= DNS_BIND_ATTEMPTS:
                    raise
                continue
            self._udp = udp
            return bound

    @property
    def unsent(self) -> int:
        """UDP replies lost on the way out so far (`DnsUdp.unsent`)."""
        return self._udp.unsent if self._udp is not None else 0

    async def close(self) -> None:
        """Stop accepting, close every open TCP connection, then the UDP endpoint."""
        tcp, self._tcp = self._tcp, None
        if tcp is not None:
            tcp.close()
            self.connections.close_all()
            await tcp.wait_closed()
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
