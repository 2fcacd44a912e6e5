"""HTTP/2 toward players, sans-io: one server connection, frames and streams of our own (RFC 9113).

`ServerConnection` is to HTTP/2 what `http1.ServerConnection` is to HTTP/1.1:
`receive_data(bytes, now)` returns events (`RequestReceived` with the same
`Request` the front takes, version "2" and `:authority` as Host;
`RequestRejected` for a request head we answer with an error on its stream;
`StreamCancelled`; `ConnectionEnded`), and `respond()` / `send_head()`,
`send_data()`, `end()` queue an answer on a stream. Bodies wait in per-stream
queues (references to the shared bytes, never copies) and leave as DATA
frames in `pump(room)`, within the peer's flow-control windows, its frame
size and the room the I/O shell has; then `data_to_send()` returns the bytes
to write. Nothing here knows about sockets, the event loop or the clock:
`livecdn/front/listener_h2.py` is the I/O shell.

Why not the `h2` package: it is correct and general, and in pure Python it
cost ~90 µs a small request (frame objects, a stream state machine per
stream, per-field validation of every header block, HPACK decoding per
request): nine tenths of an HTTP/2 hit. A player connection needs far less
of it: a server that answers GET/HEAD, reads no request body, pushes
nothing and keeps no priority tree. So this reads frames off the bytes
itself, keeps per stream only what answers need (the windows, the queue,
whether the client may still send), and decodes header blocks with the
`hpack` package's `Decoder` behind a memo: a block is decoded and checked
once for as long as the connection's dynamic table is the one it was read
against (a player repeats the same request block for each playlist reload,
all of it references into that table). The `h2` package stays the tests'
client, which checks every frame we send.

What the protocol asks of a server, and the bounds a CDN adds (each named
below, with its reason): concurrent streams past `MAX_STREAMS` are refused
per stream (REFUSED_STREAM, the client may retry); a header block is bounded
in bytes across CONTINUATION frames and its decoded list by
`MAX_HEADER_LIST`; client resets (CVE-2023-44487, rapid reset, and refused
streams the client goes on opening), PINGs, SETTINGS and PRIORITY frames are
counted per `FLOOD_INTERVAL`, past which the connection ends with GOAWAY
ENHANCE_YOUR_CALM. A malformed request (RFC 9113 §8.1.1) is a stream error;
a frame that breaks the framing, the stream rules, flow control or HPACK is
a connection error, GOAWAY with its code and the reason as debug data. A
graceful drain (`start_closing()`) sends GOAWAY with the last stream id and
lets the streams in flight finish.
"""

from __future__ import annotations

import collections
import enum
import re
import struct
from email.utils import formatdate

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hpack.table import HeaderTable

from . import hpackout
from .http1 import MAX_FIELD_BYTES, MAX_HEAD_BYTES, MAX_HEADERS, MAX_TARGET_BYTES, ProtocolError
from .http1 import Fields as _Fields
from .request import Request

__all__ = ["ConnectionEnded", "ErrorCodes", "FLOOD_INTERVAL", "MAX_CONTROL", "MAX_HEADER_BLOCK", "MAX_HEADER_LIST",
           "MAX_RESETS", "MAX_STREAMS", "PREFACE", "RequestReceived", "RequestRejected", "ServerConnection",
           "StreamCancelled"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 §3.4): over plain TCP it means prior knowledge (h2c)."""

# Streams answered at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS):
# a player has a playlist and a segment or two in flight; 100 is what nginx
# and most servers advertise, and it bounds what one connection can ask of us.
MAX_STREAMS = 100
# The decoded header list of one request (SETTINGS_MAX_HEADER_LIST_SIZE): the
# HTTP/1.1 head bound, so neither protocol lets a client make us hold more.
MAX_HEADER_LIST = MAX_HEAD_BYTES
# Compressed bytes of one header block, HEADERS plus its CONTINUATION frames:
# a block larger than the decoded bound is no request (a CONTINUATION flood).
MAX_HEADER_BLOCK = MAX_HEAD_BYTES
# Flood bounds, per connection per FLOOD_INTERVAL seconds: streams the client
# resets (a player cancels a request when it switches quality or seeks, a few
# times a minute; rapid reset does it thousands of times a second), and
# control frames that cost us work but ask for nothing (PING, SETTINGS,
# PRIORITY: a client sends a few when it starts).
FLOOD_INTERVAL = 10.0
MAX_RESETS = 100
MAX_CONTROL = 100
# Decoded request blocks kept per connection (see `ServerConnection._request`): a player
# repeats a handful; emptied when full, so distinct blocks cost their decoding, never memory.
MAX_MEMO = 64


class ErrorCodes(enum.IntEnum):
    """RFC 9113 §7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


# Frame types and flags (RFC 9113 §6).
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, \
    _CONTINUATION = range(10)
_END_STREAM = _ACK = 0x1
_END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x4, 0x8, 0x20
_FRAME = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id: a 9-byte frame header
_MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE we take (the default: never raised)
_MAX_WINDOW = 2 ** 31 - 1
_DEFAULT_WINDOW = 65535
# Settings (§6.5.2).
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE, \
    _MAX_HEADER_LIST_SIZE = range(1, 7)

# Fields never sent over HTTP/2 (RFC 9113 §8.2.2): HTTP/1.1 connection management.
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                                  "te"})
_CONNECTION_SPECIFIC_IN = frozenset(n.encode("ascii") for n in _CONNECTION_SPECIFIC)
# A request field name is lower-case token characters (§8.2.1: upper case, controls, separators or
# non-ASCII make it malformed); a value has no NUL, CR or LF and no whitespace at either end.
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]\Z")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_NO_BODY = frozenset({204, 304})


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return _FRAME.pack(len(payload) << 8 | kind, flags, sid) + payload


def _goaway(last: int, code: int, reason: str) -> bytes:
    return _frame(_GOAWAY, 0, 0, struct.pack(">II", last, code) + reason.encode("ascii", "replace")[:200])


class _Failed(Exception):
    """A connection error found while reading a frame (`receive_data` ends the connection with it)."""

    def __init__(self, code: ErrorCodes, reason: str, flood: bool = False) -> None:
        super().__init__(reason)
        self.code, self.reason, self.flood = code, reason, flood


def _flooded(bound: int, what: str, per_interval: bool = True) -> _Failed:
    """A client past a bound set against abuse: the connection ends, GOAWAY ENHANCE_YOUR_CALM."""
    within = f" in {FLOOD_INTERVAL:g} s" if per_interval else ""
    return _Failed(ErrorCodes.ENHANCE_YOUR_CALM, f"more than {bound} {what}{within}", True)


class _CountedTable(HeaderTable):
    """HPACK's dynamic table, counting its changes: a block read against one state reads the same again."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, value)  # type: ignore[attr-defined]


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
    """An answer on one stream: body pieces waiting (shared, not copied), whether END_STREAM follows, its window."""

    __slots__ = ("pieces", "queued", "ended", "body", "window")

    def __init__(self, window: int) -> None:
        self.pieces: collections.deque[memoryview] = collections.deque()
        self.queued = 0
        self.ended = False
        self.body = True  # False once the head says no body follows (HEAD, 204, 304)
        self.window = window  # what the peer lets us send on this stream (it may go below 0: §6.9.2)


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
    """One `Fields`' HTTP/2 form, kept on it as `wire_h2`: `:status` and its fields, HPACK-encoded."""

    __slots__ = ("block",)

    def __init__(self, fields: _Fields) -> None:
        pairs = [(b":status", b"%d" % fields.status)]
        for name, value in fields.headers:
            name = name.lower()
            if name not in _CONNECTION_SPECIFIC:
                pairs.append((name.encode("latin-1"), _value(value)))
        self.block = hpackout.block(pairs)


def request_of(headers: list[tuple[bytes, bytes]]) -> Request | ProtocolError | None:
    """A stream's decoded header list as the front's `Request`; None when it is malformed (RFC 9113 §8.1.1).

    Malformed (a stream error): a pseudo-header unknown, repeated, after a field or missing; a field
    name not lower-case token characters; a connection-specific field; a value with NUL, CR or LF or
    whitespace at an end. A well-formed request past our bounds is a `ProtocolError` answered on its
    stream (431, 414, 400), as HTTP/1.1 answers it.
    """
    pseudo: dict[bytes, bytes] = {}
    fields: dict[bytes, bytes] = {}
    count = 0
    bad_name, bad_value = _BAD_NAME.search, _BAD_VALUE.search
    for name, value in headers:
        if name[:1] == b":":
            if count or name not in _PSEUDO or name in pseudo:
                return None
            pseudo[name] = value
            continue
        if not name or bad_name(name) or bad_value(value):
            return None
        if name in _CONNECTION_SPECIFIC_IN and (name != b"te" or value != b"trailers"):
            return None
        count += 1
        if len(name) + len(value) > MAX_FIELD_BYTES:
            return ProtocolError(431, f"header field {name[:64].decode('latin-1')!r} longer than "
                                      f"{MAX_FIELD_BYTES} bytes")
        if name in fields:
            fields[name] += (b"; " if name == b"cookie" else b", ") + value
        else:
            fields[name] = value
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if not method or not path or not pseudo.get(b":scheme") or bad_value(method) or bad_value(path):
        return None  # CONNECT (no :scheme, no :path) included: a CDN tunnels nothing
    if count > MAX_HEADERS:
        return ProtocolError(431, f"more than {MAX_HEADERS} header fields")
    authority = pseudo.get(b":authority")
    if authority:
        fields[b"host"] = authority  # RFC 9113 §8.3.1: :authority stands for Host
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
        max_resets: client stream resets (and refused streams) per FLOOD_INTERVAL before GOAWAY ENHANCE_YOUR_CALM.
        max_control: PING, SETTINGS and PRIORITY frames per FLOOD_INTERVAL, likewise.

    Raises:
        ValueError: a bound is below 1 (the message names it).
    """

    __slots__ = ("max_streams", "max_resets", "max_control", "closing", "ended", "last_stream",
                 "_out", "_ready", "_send", "_buf", "_preface", "_settled", "_highest", "_open", "_window",
                 "_initial", "_frame_size", "_received", "_refunds", "_block", "_block_sid", "_block_flags",
                 "_block_size", "_table", "_decoder", "_encoder", "_memo", "_window_start", "_resets", "_control")

    def __init__(self, *, max_streams: int = MAX_STREAMS, max_resets: int = MAX_RESETS,
                 max_control: int = MAX_CONTROL) -> None:
        for name, value in (("max_streams", max_streams), ("max_resets", max_resets), ("max_control", max_control)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        self.max_streams, self.max_resets, self.max_control = max_streams, max_resets, max_control
        self.closing = False  # GOAWAY sent for a drain: streams in flight finish, no new one is answered
        self.ended = False  # the connection is over: nothing more is read or answered
        self.last_stream = 0  # the last stream a drain's GOAWAY promised to answer
        self._out: dict[int, _Out] = {}  # streams answered (or being answered), until END_STREAM or a reset
        self._ready: collections.deque[int] = collections.deque()  # streams with bytes or END_STREAM to send
        self._send: list[bytes | memoryview] = []  # frames for `data_to_send()`
        self._buf = b""  # an incomplete frame (at most 9 + _MAX_FRAME bytes)
        self._preface = True  # the client's preface is still to come
        self._settled = False  # its first frame, SETTINGS, has come
        self._highest = 0  # the highest stream the client opened
        self._open: dict[int, int] = {}  # streams the client may still send DATA on: their receive window
        self._window = _DEFAULT_WINDOW  # what the peer lets us send on the connection
        self._initial = _DEFAULT_WINDOW  # its SETTINGS_INITIAL_WINDOW_SIZE: a new stream's window
        self._frame_size = _MAX_FRAME  # its SETTINGS_MAX_FRAME_SIZE
        self._received = _DEFAULT_WINDOW  # what the client may still send on the connection
        self._refunds: dict[int, int] = {}  # DATA bytes read this read, by stream (0: the connection)
        self._block: list[bytes] = []  # a header block whose END_HEADERS has not come
        self._block_sid = 0
        self._block_flags = 0
        self._block_size = 0
        self._table = _CountedTable()
        self._decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._decoder.header_table = self._table
        self._encoder = hpackout.Encoder()
        self._memo: dict[bytes, tuple[int, Request | ProtocolError | None]] = {}
        self._window_start = -FLOOD_INTERVAL
        self._resets = 0
        self._control = 0

    # --- the connection ---

    def initiate(self) -> None:
        """The server's SETTINGS (its connection preface), queued for `data_to_send()`."""
        self._send.append(_frame(_SETTINGS, 0, 0, struct.pack(
            ">HIHIHI", _MAX_CONCURRENT_STREAMS, self.max_streams, _MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
            _ENABLE_PUSH, 0)))

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
        out: list[Event] = []
        if now - self._window_start >= FLOOD_INTERVAL:  # the flood counts start again
            self._window_start, self._resets, self._control = now, 0, 0
        buf = self._buf + data if self._buf else data
        try:
            if self._preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(buf):
                        raise _Failed(ErrorCodes.PROTOCOL_ERROR, "no HTTP/2 connection preface")
                    self._buf = buf
                    return out
                if not buf.startswith(PREFACE):
                    raise _Failed(ErrorCodes.PROTOCOL_ERROR, "no HTTP/2 connection preface")
                self._preface = False
                buf = buf[len(PREFACE):]
            pos, size = 0, len(buf)
            unpack = _FRAME.unpack_from
            while size - pos >= 9:
                word, flags, sid = unpack(buf, pos)
                length = word >> 8
                if length > _MAX_FRAME:
                    raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, f"a frame of {length} bytes, over {_MAX_FRAME}")
                end = pos + 9 + length
                if end > size:
                    break
                payload = buf[pos + 9:end]
                pos = end
                if self._frame(word & 0xFF, flags, sid & 0x7FFFFFFF, payload, now, out):
                    return out  # the client's GOAWAY: nothing after it is read
            self._buf = buf[pos:]
        except _Failed as e:
            out.append(self._fail(e.code, e.reason, e.flood))
            return out
        if self._refunds:
            self._refund()
        return out

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, now: float, out: list[Event]) -> bool:
        """One whole frame (RFC 9113 §6); True when it ended the connection (a GOAWAY)."""
        if self._block_sid and kind != _CONTINUATION:
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"a frame of type {kind} inside a header block")
        if not self._settled:
            if kind != _SETTINGS or flags & _ACK:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, "the client's first frame is not SETTINGS")
            self._settled = True
        if kind == _HEADERS:
            self._headers(flags, sid, payload, out)
        elif kind == _WINDOW_UPDATE:
            self._window_update(sid, payload, out)
        elif kind == _DATA:
            self._data(flags, sid, payload, out)
        elif kind == _RST_STREAM:
            if len(payload) != 4:
                raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM is 4 bytes")
            self._opened_stream(sid, "RST_STREAM")
            self._open.pop(sid, None)
            if self._out.pop(sid, None) is not None:
                out.append(StreamCancelled(sid))
            self._count_reset()
        elif kind == _SETTINGS:
            if sid:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & _ACK:
                if payload:
                    raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
                return False
            if len(payload) % 6:
                raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
            self._count_control()
            self._settings(payload)
            self._send.append(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING:
            if sid:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "PING is 8 bytes")
            if not flags & _ACK:
                self._count_control()
                self._send.append(_frame(_PING, _ACK, 0, payload))
        elif kind == _PRIORITY:
            self._client_stream(sid, "PRIORITY")
            if len(payload) != 5:
                raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "PRIORITY is 5 bytes")
            if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"stream {sid} depends on itself")
            self._count_control()
        elif kind == _CONTINUATION:
            if not self._block_sid or sid != self._block_sid:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION with no header block before it")
            self._fragment(payload)
            if flags & _END_HEADERS:
                block, self._block = b"".join(self._block), []
                self._block_sid = 0
                self._headers_done(sid, self._block_flags, block, out)
        elif kind == _GOAWAY:
            if sid:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self._over()
            out.append(ConnectionEnded(int.from_bytes(payload[4:8], "big"), "the client sent GOAWAY"))
            return True
        elif kind == _PUSH_PROMISE:
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        # Any other type is an extension we do not know: ignored (§5.5).
        return False

    @staticmethod
    def _client_stream(sid: int, kind: str) -> None:
        """A frame that may open a stream: on an id a client may use (odd, §5.1.1)."""
        if not sid or not sid & 1:
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"{kind} on stream {sid} (a client's streams are odd)")

    def _opened_stream(self, sid: int, kind: str) -> None:
        """A frame about a stream: on one the client opened (an idle one is a connection error, §5.1)."""
        if not sid:
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"{kind} on stream 0")
        if sid > self._highest:
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"{kind} on idle stream {sid}")

    @staticmethod
    def _unpad(flags: int, payload: bytes, kind: str) -> tuple[int, int]:
        """Where the frame's content starts and ends inside its padding (§6.1)."""
        if not flags & _PADDED:
            return 0, len(payload)
        if not payload or payload[0] >= len(payload):
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"{kind} padding as long as the frame")
        return 1, len(payload) - payload[0]

    def _headers(self, flags: int, sid: int, payload: bytes, out: list[Event]) -> None:
        self._client_stream(sid, "HEADERS")
        start, stop = self._unpad(flags, payload, "HEADERS")
        if flags & _PRIORITY_FLAG:
            if stop - start < 5:
                raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if int.from_bytes(payload[start:start + 4], "big") & 0x7FFFFFFF == sid:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"stream {sid} depends on itself")
            start += 5
        if sid <= self._highest and sid not in self._open:
            raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"HEADERS on stream {sid}, closed or below the highest")
        fragment = payload[start:stop] if start or stop != len(payload) else payload
        if flags & _END_HEADERS:
            self._block_size = 0
            if len(fragment) > MAX_HEADER_BLOCK:
                raise _flooded(MAX_HEADER_BLOCK, "bytes in a header block", per_interval=False)
            self._headers_done(sid, flags, fragment, out)
            return
        self._block_sid, self._block_flags, self._block, self._block_size = sid, flags, [], 0
        self._fragment(fragment)

    def _fragment(self, fragment: bytes) -> None:
        self._block_size += len(fragment)
        if self._block_size > MAX_HEADER_BLOCK:
            raise _flooded(MAX_HEADER_BLOCK, "bytes in a header block", per_interval=False)
        self._block.append(fragment)


    def _headers_done(self, sid: int, flags: int, block: bytes, out: list[Event]) -> None:
        """A whole header block: a new stream's request, or a trailer section (read, then dropped)."""
        parsed = self._request(block)  # decoded whatever follows: the dynamic table must stay in step
        end_stream = flags & _END_STREAM
        if sid <= self._highest:  # trailers: they must end the stream (§8.1)
            del self._open[sid]
            if not end_stream:
                self._stream_error(sid, ErrorCodes.PROTOCOL_ERROR, out)
            return
        self._highest = sid
        if not end_stream:
            self._open[sid] = _DEFAULT_WINDOW
        if self.closing and sid > self.last_stream:
            self._rst(sid, ErrorCodes.REFUSED_STREAM)  # past the drain's GOAWAY: never answered
            return
        if len(self._out) >= self.max_streams or len(self._open) > self.max_streams:
            self._rst(sid, ErrorCodes.REFUSED_STREAM)
            self._count_reset()
            return
        if parsed is None:
            self._rst(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        self._out[sid] = _Out(self._initial)
        if type(parsed) is Request:
            request = Request(parsed.method, parsed.target, "2", dict(parsed.headers), True)
            out.append(RequestReceived(sid, request))
        else:
            out.append(RequestRejected(sid, parsed))  # type: ignore[arg-type]

    def _request(self, block: bytes) -> Request | ProtocolError | None:
        """The block decoded and checked (`request_of`), once while the dynamic table it was read against lasts."""
        table = self._table
        kept = self._memo.get(block)
        if kept is not None and kept[0] == table.changes:
            return kept[1]
        before = table.changes
        try:
            headers = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise _flooded(MAX_HEADER_LIST, "bytes in a decoded header list", per_interval=False) from None
        except (HPACKError, IndexError, ValueError) as e:
            raise _Failed(ErrorCodes.COMPRESSION_ERROR, f"a header block HPACK cannot read: {e}"[:200]) from None
        parsed = request_of(headers)  # type: ignore[arg-type]
        if table.changes == before:  # read with no change to the table: it reads the same while none follows
            if len(self._memo) >= MAX_MEMO:
                self._memo.clear()
            self._memo[block] = (before, parsed)
        return parsed

    def _stream_error(self, sid: int, code: ErrorCodes, out: list[Event]) -> None:
        """The client broke a stream's rules (§5.4.2): reset it, and its answer stops."""
        if self._out.pop(sid, None) is not None:
            out.append(StreamCancelled(sid))
        self._rst(sid, code)

    def _rst(self, sid: int, code: ErrorCodes) -> None:
        """RST_STREAM: the stream is over both ways (a refusal, a stream error, our reset of an answer)."""
        self._open.pop(sid, None)
        self._send.append(_frame(_RST_STREAM, 0, sid, code.to_bytes(4, "big")))

    def _data(self, flags: int, sid: int, payload: bytes, out: list[Event]) -> None:
        """A request body is never read (GET/HEAD/OPTIONS need none): dropped, its window given back."""
        self._opened_stream(sid, "DATA")
        self._unpad(flags, payload, "DATA")
        length = len(payload)
        self._received -= length
        if self._received < 0:
            raise _Failed(ErrorCodes.FLOW_CONTROL_ERROR, "DATA past the connection's window")
        refunds = self._refunds
        if length:
            refunds[0] = refunds.get(0, 0) + length
        window = self._open.get(sid)
        if window is None:
            self._rst(sid, ErrorCodes.STREAM_CLOSED)
            return
        if length > window:
            self._stream_error(sid, ErrorCodes.FLOW_CONTROL_ERROR, out)
            return
        if flags & _END_STREAM:
            del self._open[sid]
        else:
            self._open[sid] = window - length
            if length:
                refunds[sid] = refunds.get(sid, 0) + length

    def _refund(self) -> None:
        """WINDOW_UPDATEs for the DATA this read dropped, the windows given back with them."""
        for sid, length in self._refunds.items():
            if not sid:
                self._received += length
            elif sid in self._open:
                self._open[sid] += length
            else:
                continue
            self._send.append(_frame(_WINDOW_UPDATE, 0, sid, length.to_bytes(4, "big")))
        self._refunds.clear()

    def _window_update(self, sid: int, payload: bytes, out: list[Event]) -> None:
        if len(payload) != 4:
            raise _Failed(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, "a connection window increment of 0")
            self._window += increment
            if self._window > _MAX_WINDOW:
                raise _Failed(ErrorCodes.FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
            self._requeue()
            return
        self._opened_stream(sid, "WINDOW_UPDATE")
        stream = self._out.get(sid)
        if stream is None:
            return  # a stream we finished or reset: the update was on its way
        stream.window += increment
        if not increment or stream.window > _MAX_WINDOW:
            self._stream_error(sid, ErrorCodes.PROTOCOL_ERROR if not increment else ErrorCodes.FLOW_CONTROL_ERROR, out)
        elif sid not in self._ready:
            self._ready.append(sid)

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload), 6):
            code, value = struct.unpack_from(">HI", payload, i)
            if code == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _Failed(ErrorCodes.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1")
                delta, self._initial = value - self._initial, value
                for stream in self._out.values():  # §6.9.2: every stream's window moves by the change
                    stream.window += delta
                    if stream.window > _MAX_WINDOW:
                        raise _Failed(ErrorCodes.FLOW_CONTROL_ERROR, "a stream's window past 2^31-1")
                self._requeue()
            elif code == _MAX_FRAME_SIZE:
                if not _MAX_FRAME <= value <= 2 ** 24 - 1:
                    raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._frame_size = value
            elif code == _ENABLE_PUSH and value > 1:
                raise _Failed(ErrorCodes.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            # SETTINGS_HEADER_TABLE_SIZE needs nothing: our blocks use no dynamic table (hpackout).

    def _count_reset(self) -> None:
        """A stream reset by the client, or refused to it (rapid reset, CVE-2023-44487)."""
        self._resets += 1
        if self._resets > self.max_resets:
            raise _flooded(self.max_resets, "stream resets")

    def _count_control(self) -> None:
        """A control frame that costs us work and asks for nothing."""
        self._control += 1
        if self._control > self.max_control:
            raise _flooded(self.max_control, "PING, SETTINGS or PRIORITY frames")

    def _requeue(self) -> None:
        """Every stream back in turn (a window they all share may have opened)."""
        ready = self._ready
        ready.extend([s for s in self._out if s not in ready])

    def _fail(self, code: ErrorCodes, reason: str, flood: bool) -> ConnectionEnded:
        """End the connection with GOAWAY; for abuse, what was queued in answer to it (a flood's acks) is dropped."""
        if flood:
            self._send.clear()
        self._send.append(_goaway(self._highest, code, reason))
        self._over()
        return ConnectionEnded(int(code), reason)

    def _over(self) -> None:
        self.ended = True
        self._out.clear()
        self._ready.clear()
        self._open.clear()
        self._buf = b""

    def start_closing(self) -> None:
        """A graceful drain: GOAWAY naming the last stream opened; those up to it finish, later ones are refused."""
        if self.closing or self.ended:
            return
        self.closing = True
        self.last_stream = self._highest
        self._send.append(_goaway(self.last_stream, ErrorCodes.NO_ERROR, ""))

    def finish(self) -> None:
        """End the connection now (its streams are done, or a timeout): GOAWAY, NO_ERROR."""
        if not self.ended:
            self._send.append(_goaway(self._highest, ErrorCodes.NO_ERROR, ""))
            self._over()

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
        field = hpackout.field
        encoded = [wire.block]
        if status not in _NO_BODY and length is not None:
            encoded.append(field(b"content-length", b"%d" % length))
        if born is not None:
            encoded.append(field(b"age", b"%d" % (int(now - born) if now > born else 0)))
        encoded.append(field(b"date", _date(now)))
        out.body = status not in _NO_BODY and (request is None or request.method != "HEAD")
        block = self._encoder.join(encoded)
        size, total = self._frame_size, len(block)
        kind, flags = _HEADERS, 0 if out.body else _END_STREAM
        for start in range(0, total, size):  # past one frame: HEADERS, then CONTINUATION frames (§6.10)
            last = start + size >= total
            self._send.append(_frame(kind, flags | _END_HEADERS if last else flags, sid, block[start:start + size]))
            kind, flags = _CONTINUATION, 0
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
            self._rst(sid, code)

    def queued(self, sid: int) -> int:
        """Body bytes waiting to leave on `sid` (0 once it is done or reset)."""
        out = self._out.get(sid)
        return 0 if out is None else out.queued

    def pump(self, room: int) -> None:
        """Turn queued body bytes into DATA frames: at most `room` bytes, within the windows, streams in turn."""
        ready, streams, send, pack = self._ready, self._out, self._send, _FRAME.pack
        if self.ended:
            return
        frame = self._frame_size
        while ready:
            sid = ready.popleft()
            out = streams.get(sid)
            if out is None:
                continue
            if not out.pieces:
                if out.ended:
                    send.append(pack(_DATA, _END_STREAM, sid))
                    del streams[sid]
                continue
            if room <= 0:
                ready.appendleft(sid)
                break
            window = out.window if out.window < self._window else self._window
            if window <= 0:
                continue  # out of turn until a WINDOW_UPDATE (or SETTINGS) brings it back
            piece = out.pieces[0]
            size = min(len(piece), window, frame, room)
            if size == len(piece):
                out.pieces.popleft()
            else:
                out.pieces[0] = piece[size:]
                piece = piece[:size]
            out.queued -= size
            out.window -= size
            self._window -= size
            last = out.ended and not out.pieces
            send.append(pack(size << 8 | _DATA, _END_STREAM if last else 0, sid))
            send.append(piece)
            room -= size + 9
            if last:
                del streams[sid]
            else:
                ready.append(sid)

    def blocked(self) -> bool:
        """Whether body bytes wait that no window lets out (a zero-window stall, bounded by the shell's timeout)."""
        return any(out.queued and min(out.window, self._window) <= 0 for out in self._out.values())

    def data_to_send(self) -> bytes:
        """Bytes to write now (frames queued by any call above)."""
        send = self._send
        if not send:
            return b""
        data = send[0] if len(send) == 1 and type(send[0]) is bytes else b"".join(send)
        send.clear()
        return data
