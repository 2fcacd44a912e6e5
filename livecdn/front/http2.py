"""HTTP/2 toward players, sans-io: one server connection over the `h2` package.

`ServerConnection` wraps `h2.connection.H2Connection` (server side) the way
`http1.ServerConnection` wraps llhttp: `receive_data(bytes, now)` returns
events (`RequestReceived` with the same `Request` the front takes, version
"2" and `:authority` as Host; `RequestRejected` for a request head we answer
with an error on its stream; `StreamCancelled`; `ConnectionEnded`), and
`respond()` / `send_head()`, `send_data()`, `end()` queue an answer on a
stream. Bodies wait in per-stream queues (references to the shared bytes,
never copies) and leave as DATA frames in `pump(room)`, within the peer's
flow-control windows, its frame size and the room the I/O shell has; then
`data_to_send()` returns the bytes to write. Nothing here knows about sockets,
the event loop or the clock: `livecdn/front/listener_h2.py` is the I/O shell.

What h2 does not bound, this does (each bound named below, with its reason):
concurrent streams past `MAX_STREAMS` are refused per stream (h2 alone would
end the whole connection), a header block is bounded in bytes across
CONTINUATION frames (h2 counts only the frames: 64 of up to 16 KiB), and
client resets (CVE-2023-44487, rapid reset), PINGs, SETTINGS and PRIORITY
frames are counted per `FLOOD_INTERVAL`, past which the connection ends with
GOAWAY ENHANCE_YOUR_CALM. A graceful drain (`start_closing()`) sends GOAWAY
with the last stream id and lets the streams in flight finish.
"""

from __future__ import annotations

import collections
from email.utils import formatdate

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from . import hpackout
from .http1 import MAX_FIELD_BYTES, MAX_HEAD_BYTES, MAX_HEADERS, MAX_TARGET_BYTES, ProtocolError
from .http1 import Fields as _Fields
from .request import Request

__all__ = ["ConnectionEnded", "FLOOD_INTERVAL", "MAX_CONTROL", "MAX_HEADER_BLOCK", "MAX_HEADER_LIST",
           "MAX_RESETS", "MAX_STREAMS", "PREFACE", "RequestReceived", "RequestRejected", "ServerConnection",
           "StreamCancelled"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 §3.4): over plain TCP it means prior knowledge (h2c)."""

# Streams answered at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS):
# a player has a playlist and a segment or two in flight; 100 is what nginx
# and most servers advertise, and it bounds what one connection can ask of us.
MAX_STREAMS = 100
# A stream past MAX_STREAMS is refused (REFUSED_STREAM, the client may retry);
# h2's own bound, an error for the whole connection, is kept for a client
# that goes on opening streams while refused ones are still counted.
_H2_HARD_STREAMS = 2 * MAX_STREAMS
# The decoded header list of one request (SETTINGS_MAX_HEADER_LIST_SIZE): the
# HTTP/1.1 head bound, so neither protocol lets a client make us hold more.
MAX_HEADER_LIST = MAX_HEAD_BYTES
# Compressed bytes of one header block, HEADERS plus its CONTINUATION frames:
# h2 4.x only stops at 64 CONTINUATION frames (up to 1 MiB buffered at the
# default frame size); a block larger than the decoded bound is no request.
MAX_HEADER_BLOCK = MAX_HEAD_BYTES
# Flood bounds, per connection per FLOOD_INTERVAL seconds: streams the client
# resets (a player cancels a request when it switches quality or seeks, a few
# times a minute; rapid reset does it thousands of times a second), and
# control frames that cost us work but ask for nothing (PING, SETTINGS,
# PRIORITY: a client sends a few when it starts).
FLOOD_INTERVAL = 10.0
MAX_RESETS = 100
MAX_CONTROL = 100
# Fields never sent over HTTP/2 (RFC 9113 §8.2.2): HTTP/1.1 connection management.
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                                  "te"})
_NO_BODY = frozenset({204, 304})
_STATUS = {s: str(s).encode("ascii") for s in range(100, 600)}
_HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4


class RequestReceived:
    """A stream's request head is complete: answer it on `stream_id`."""

    __slots__ = ("stream_id", "request")

    def __init__(self, stream_id: int, request: Request) -> None:
        self.stream_id, self.request = stream_id, request

    def __repr__(self) -> str:
        return f"RequestReceived({self.stream_id}, {self.request!r})"


class RequestRejected:
    """A stream's request head is one we do not serve: answer `error` on that stream (the connection stays)."""

    __slots__ = ("stream_id", "error")

    def __init__(self, stream_id: int, error: ProtocolError) -> None:
        self.stream_id, self.error = stream_id, error

    def __repr__(self) -> str:
        return f"RequestRejected({self.stream_id}, {self.error!r})"


class StreamCancelled:
    """The client reset a stream: its answer stops (what it shared, like a fill, goes on)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"StreamCancelled({self.stream_id})"


class ConnectionEnded:
    """The connection is over (a protocol error, a flood, the client's GOAWAY): write what is left, then close."""

    __slots__ = ("error_code", "reason")

    def __init__(self, error_code: int, reason: str) -> None:
        self.error_code, self.reason = error_code, reason

    def __repr__(self) -> str:
        return f"ConnectionEnded({self.error_code}, {self.reason!r})"


Event = RequestReceived | RequestRejected | StreamCancelled | ConnectionEnded


class _Out:
    """What waits to leave on one stream: body pieces (shared, not copied) and whether END_STREAM follows."""

    __slots__ = ("pieces", "queued", "ended", "body")

    def __init__(self) -> None:
        self.pieces: collections.deque[memoryview] = collections.deque()
        self.queued = 0
        self.ended = False
        self.body = True  # False once the head says no body follows (HEAD, 204, 304)


class _BlockMeter:
    """Reads frame headers off the received bytes to bound a header block across CONTINUATION frames."""

    __slots__ = ("skip", "head", "block")

    def __init__(self) -> None:
        self.skip = len(PREFACE)  # payload bytes (or the preface) still to pass over
        self.head = b""  # an incomplete 9-byte frame header
        self.block = 0  # bytes of the header block not yet ended by END_HEADERS

    def feed(self, data: bytes) -> bool:
        """Whether the bytes keep every header block within MAX_HEADER_BLOCK."""
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                step = min(self.skip, n - i)
                self.skip -= step
                i += step
                continue
            need = 9 - len(self.head)
            self.head += data[i:i + need]
            i += need
            if len(self.head) < 9:
                break
            head, self.head = self.head, b""
            self.skip = length = int.from_bytes(head[:3], "big")
            if head[3] in (_HEADERS, _CONTINUATION):
                self.block += length
                if self.block > MAX_HEADER_BLOCK:
                    return False
                if head[4] & _END_HEADERS:
                    self.block = 0
        return True


_date_cache: list[object] = [-1, b""]


def _date(now: float) -> bytes:
    second = int(now)
    if _date_cache[0] != second:
        _date_cache[0] = second
        _date_cache[1] = formatdate(second, usegmt=True).encode("ascii")
    return _date_cache[1]  # type: ignore[return-value]


def _value(value: str) -> bytes:
    if "\r" in value or "\n" in value:  # never let a stored value carry a line break to a player
        value = value.replace("\r", " ").replace("\n", " ")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


class _Wire:
    """One `Fields`' HTTP/2 form, kept on it as `wire_h2`: its `:status`, and its other fields HPACK-encoded."""

    __slots__ = ("status", "block")

    def __init__(self, fields: _Fields) -> None:
        self.status = _STATUS.get(fields.status) or str(fields.status).encode("ascii")
        pairs = []
        for name, value in fields.headers:
            name = name.lower()
            if name not in _CONNECTION_SPECIFIC:
                pairs.append((name.encode("latin-1"), _value(value)))
        self.block = hpackout.block(pairs)


def request_of(headers: list[tuple[bytes, bytes]]) -> Request | ProtocolError:
    """A stream's decoded header list as the front's `Request` (h2 has checked the pseudo-headers' grammar)."""
    method = path = authority = b""
    fields: dict[bytes, bytes] = {}
    count = 0
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        count += 1
        if len(name) + len(value) > MAX_FIELD_BYTES:
            return ProtocolError(431, f"header field {name[:64].decode('latin-1')!r} longer than "
                                      f"{MAX_FIELD_BYTES} bytes")
        if name in fields:
            fields[name] += (b"; " if name == b"cookie" else b", ") + value
        else:
            fields[name] = value
    if count > MAX_HEADERS:
        return ProtocolError(431, f"more than {MAX_HEADERS} header fields")
    if authority:
        fields[b"host"] = authority  # RFC 9113 §8.3.1: :authority stands for Host (h2 requires one of them)
    if len(path) > MAX_TARGET_BYTES:
        return ProtocolError(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
    try:
        target = path.decode("utf-8")
    except UnicodeDecodeError:
        return ProtocolError(400, "request target is not valid UTF-8")
    return Request(method.decode("latin-1"), target, "2", fields, True)


class ServerConnection:
    """One HTTP/2 server connection, both directions (no sockets, no clock: `now` is passed in).

    Call `initiate()` once, then feed `receive_data()`; answer each
    `RequestReceived` with `respond()` or `send_head()`, `send_data()`...,
    `end()`; call `pump(room)` and write `data_to_send()` after each step.

    Args:
        max_streams: streams answered at once (advertised; more are refused with REFUSED_STREAM).
        max_resets: client stream resets per FLOOD_INTERVAL before GOAWAY ENHANCE_YOUR_CALM.
        max_control: PING, SETTINGS and PRIORITY frames per FLOOD_INTERVAL, likewise.

    Raises:
        ValueError: a bound is below 1 (the message names it).
    """

    __slots__ = ("h2", "max_streams", "max_resets", "max_control", "closing", "ended", "last_stream",
                 "_out", "_ready", "_goaway", "_meter", "_window_start", "_resets", "_control")

    def __init__(self, *, max_streams: int = MAX_STREAMS, max_resets: int = MAX_RESETS,
                 max_control: int = MAX_CONTROL) -> None:
        for name, value in (("max_streams", max_streams), ("max_resets", max_resets), ("max_control", max_control)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        self.max_streams, self.max_resets, self.max_control = max_streams, max_resets, max_control
        # What a client sends is checked by h2 (pseudo-headers, connection-specific fields, case);
        # what we send is built valid here (`send_head`: lower-case names, no connection-specific
        # fields, no line breaks), so h2's per-field checks of it, most of an answer's cost, are off.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.encoder = hpackout.Encoder()  # type: ignore[assignment]  # h2's interface, no dynamic table
        self.closing = False  # GOAWAY sent for a drain: streams in flight finish, no new one is answered
        self.ended = False  # the connection is over: nothing more is read or answered
        self.last_stream = 0  # the last stream a drain's GOAWAY promised to answer
        self._out: dict[int, _Out] = {}  # streams answered (or being answered), until END_STREAM or a reset
        self._ready: collections.deque[int] = collections.deque()  # streams with bytes or END_STREAM to send
        self._goaway = b""  # a drain's GOAWAY, after what h2 has queued
        self._meter = _BlockMeter()
        self._window_start = -FLOOD_INTERVAL
        self._resets = 0
        self._control = 0

    # --- the connection ---

    def initiate(self) -> None:
        """The server's SETTINGS (its connection preface), queued for `data_to_send()`."""
        h = self.h2
        codes = h2.settings.SettingCodes
        h.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: self.max_streams,
            codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            codes.ENABLE_PUSH: 0,
        })
        h.decoder.max_header_list_size = MAX_HEADER_LIST  # h2 applies it only once the client acknowledges
        h.initiate_connection()
        # Advertised: max_streams. Enforced by h2 from now on (a connection error): the hard bound.
        h.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: _H2_HARD_STREAMS,
            codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            codes.ENABLE_PUSH: 0,
        })

    @property
    def active(self) -> int:
        """Streams being answered (their last byte not yet handed to `data_to_send()`)."""
        return len(self._out)

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes received; returns what they mean (see the event classes).

        Args:
            data: the bytes, in order. Once `ended`, bytes are ignored.
            now: a monotonic clock in seconds (the flood windows).
        """
        if self.ended or not data:
            return []
        if not self._meter.feed(data):
            return [self._end(ErrorCodes.ENHANCE_YOUR_CALM, f"header block larger than {MAX_HEADER_BLOCK} bytes")]
        try:
            received = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:  # h2 queued its GOAWAY
            self.ended = True
            return [ConnectionEnded(int(e.error_code), str(e)[:200] or type(e).__name__)]
        out: list[Event] = []
        carried = None  # the priority a HEADERS frame carried: h2 reports it again, as if a PRIORITY frame
        for ev in received:
            if isinstance(ev, h2.events.RequestReceived):
                carried = ev.priority_updated
                self._request(ev, out)
            elif isinstance(ev, h2.events.DataReceived):
                # A request body is never read (GET/HEAD/OPTIONS need none): its bytes are
                # dropped and their window given back, so the connection does not stall.
                if ev.flow_controlled_length and ev.stream_id is not None:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                sid = ev.stream_id or 0
                self._forget(sid)
                out.append(StreamCancelled(sid))
                if self._over(now, "_resets", self.max_resets):
                    out.append(self._end(ErrorCodes.ENHANCE_YOUR_CALM,
                                         f"more than {self.max_resets} stream resets in {FLOOD_INTERVAL:g} s"))
                    return out
            elif isinstance(ev, (h2.events.PingReceived, h2.events.RemoteSettingsChanged, h2.events.PriorityUpdated)):
                if ev is carried:
                    continue  # part of a request (browsers send one with each): not a control frame
                if self._over(now, "_control", self.max_control):
                    out.append(self._end(ErrorCodes.ENHANCE_YOUR_CALM, f"more than {self.max_control} PING, "
                                                                       f"SETTINGS or PRIORITY frames in "
                                                                       f"{FLOOD_INTERVAL:g} s"))
                    return out
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    self._requeue()  # the initial window may have grown
            elif isinstance(ev, h2.events.WindowUpdated):
                sid = ev.stream_id or 0
                if sid == 0:
                    self._requeue()
                elif sid in self._out and sid not in self._ready:
                    self._ready.append(sid)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.ended = True
                out.append(ConnectionEnded(int(ev.error_code or 0), "the client sent GOAWAY"))
                return out
        return out

    def _requeue(self) -> None:
        """Every stream back in turn (a window they all share may have opened)."""
        ready = self._ready
        ready.extend([s for s in self._out if s not in ready])

    def _over(self, now: float, counter: str, bound: int) -> bool:
        if now - self._window_start >= FLOOD_INTERVAL:
            self._window_start, self._resets, self._control = now, 0, 0
        count = getattr(self, counter) + 1
        setattr(self, counter, count)
        return count > bound

    def _request(self, ev: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = ev.stream_id
        assert sid is not None
        if self.closing and sid > self.last_stream:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # past the drain's GOAWAY: never answered
            return
        if len(self._out) >= self.max_streams:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        self._out[sid] = _Out()
        parsed = request_of(ev.headers or [])
        out.append(RequestRejected(sid, parsed) if isinstance(parsed, ProtocolError) else RequestReceived(sid, parsed))

    def _end(self, code: ErrorCodes, reason: str) -> ConnectionEnded:
        """End the connection for abuse: what h2 queued in answer to this read (the flood's acks) is dropped."""
        self.h2.data_to_send()
        self.h2.close_connection(code, reason.encode("ascii", "replace")[:200])
        self.ended = True
        self._out.clear()
        self._ready.clear()
        return ConnectionEnded(int(code), reason)

    def _forget(self, sid: int) -> None:
        self._out.pop(sid, None)

    def start_closing(self) -> None:
        """A graceful drain: GOAWAY naming the last stream answered; those up to it finish, later ones are refused.

        h2 takes any GOAWAY for the end of the connection (no frame may follow
        it there), so the drain's is serialized here and h2's own follows
        once the last stream is done (`finish()`).
        """
        if self.closing or self.ended:
            return
        self.closing = True
        self.last_stream = self.h2.highest_inbound_stream_id
        self._goaway = GoAwayFrame(0, last_stream_id=self.last_stream).serialize()

    def finish(self) -> None:
        """End the connection now (its streams are done, or a timeout): h2's GOAWAY, NO_ERROR."""
        if not self.ended:
            self.h2.close_connection(ErrorCodes.NO_ERROR)
            self.ended = True
            self._out.clear()
            self._ready.clear()

    # --- answers out ---

    def respond(self, sid: int, request: Request | None, fields: _Fields, body: bytes | memoryview,
                born: float | None, now: float) -> None:
        """A whole answer whose body is in hand (sent as the windows allow)."""
        self.send_head(sid, request, fields, len(body), born, now)
        out = self._out.get(sid)
        if out is not None and out.body and body:
            self.send_data(sid, body)
        self.end(sid)

    def send_head(self, sid: int, request: Request | None, fields: _Fields, length: int | None,
                  born: float | None, now: float) -> None:
        """The HEADERS of an answer; its body follows in `send_data()` (length None: not known)."""
        out = self._out.get(sid)
        if out is None or self.ended:
            return  # reset meanwhile: nobody to answer
        status = fields.status
        wire = fields.wire_h2
        if type(wire) is not _Wire:
            wire = fields.wire_h2 = _Wire(fields)
        # h2 gets `:status` and one field of the rest encoded already (see `hpackout.ENCODED`).
        encoded = [wire.block]
        field = hpackout.field
        if status not in _NO_BODY and length is not None:
            encoded.append(field(b"content-length", b"%d" % length))
        if born is not None:
            encoded.append(field(b"age", b"%d" % (int(now - born) if now > born else 0)))
        encoded.append(field(b"date", _date(now)))
        out.body = status not in _NO_BODY and (request is None or request.method != "HEAD")
        self.h2.send_headers(sid, [(b":status", wire.status), (hpackout.ENCODED, b"".join(encoded))],
                             end_stream=not out.body)
        if not out.body:
            del self._out[sid]

    def sends_body(self, sid: int) -> bool:
        """Whether the answer begun on `sid` carries body bytes (not HEAD, 204 or 304; not reset)."""
        out = self._out.get(sid)
        return out is not None and out.body

    def send_data(self, sid: int, data: bytes | memoryview) -> None:
        """Queue a piece of the body (kept by reference until it leaves)."""
        out = self._out.get(sid)
        if out is None or not out.body or not data:
            return
        out.pieces.append(data if type(data) is memoryview else memoryview(data))
        out.queued += len(data)
        if sid not in self._ready:
            self._ready.append(sid)

    def end(self, sid: int) -> None:
        """The body is complete: END_STREAM follows its last byte."""
        out = self._out.get(sid)
        if out is not None:
            out.ended = True
            if sid not in self._ready:
                self._ready.append(sid)

    def reset(self, sid: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Reset a stream we answer (a broken upstream body: it must not pass for a whole one)."""
        if self._out.pop(sid, None) is not None and not self.ended:
            self.h2.reset_stream(sid, code)

    def queued(self, sid: int) -> int:
        """Body bytes waiting to leave on `sid` (0 once it is done or reset)."""
        out = self._out.get(sid)
        return 0 if out is None else out.queued

    def pump(self, room: int) -> None:
        """Turn queued body bytes into DATA frames: at most `room` bytes, within the windows, streams in turn."""
        h, ready, streams = self.h2, self._ready, self._out
        if self.ended:
            return
        frame = h.max_outbound_frame_size
        while ready:
            sid = ready.popleft()
            out = streams.get(sid)
            if out is None:
                continue
            if not out.pieces:
                if out.ended:
                    h.send_data(sid, b"", end_stream=True)
                    del streams[sid]
                continue
            if room <= 0:
                ready.appendleft(sid)
                break
            window = h.local_flow_control_window(sid)
            if window <= 0:
                continue  # out of turn until a WINDOW_UPDATE (or SETTINGS) brings it back
            piece = out.pieces[0]
            size = min(len(piece), window, frame, room)
            if size == len(piece):
                out.pieces.popleft()
            else:
                out.pieces[0] = piece[size:]
            out.queued -= size
            last = out.ended and not out.pieces
            h.send_data(sid, piece[:size], end_stream=last)
            room -= size + 9
            if last:
                del streams[sid]
            else:
                ready.append(sid)

    def blocked(self) -> bool:
        """Whether body bytes wait that no window lets out (a zero-window stall, bounded by the shell's timeout)."""
        return any(out.queued and self.h2.local_flow_control_window(sid) <= 0 for sid, out in self._out.items())

    def data_to_send(self) -> bytes:
        """Bytes to write now (frames queued by any call above)."""
        data = self.h2.data_to_send()
        if self._goaway:
            data, self._goaway = data + self._goaway, b""
        return data
