"""HTTP/1.1 toward players, sans-io: one server connection, both directions.

`ServerConnection` is shaped like h11's `Connection`: `receive_data(bytes)`
feeds it, `next_event()` returns the next `Request`, a `ProtocolError`
(carrying the status to answer with) or `NEED_DATA`; `respond()` (a whole
answer whose body is in hand) or `send_head()`/`send_data()`/`send_end()` (a
streamed one) return the bytes to write. It owns everything HTTP/1.1 decides
about a connection: framing (Content-Length, chunked, or the connection's end
for an HTTP/1.0 body of unknown length), HEAD and 304 without a body,
keep-alive (the client's wish, an error, a shutdown, a broken body), and one
answer at a time in request order. `RequestParser` is its request half:
`httptools` (llhttp) for the grammar, plus what llhttp leaves to its user:
bounded buffering, the version rule (and RTSP, which llhttp also reads), `Expect`;
and a memo of the requests it read whole, by their bytes, for the next
connection that sends the same (the viewers of one stream do), taken only
where llhttp waits for a request's first byte. Nothing here knows about
sockets, the event loop or the clock: `livecdn/front/listener.py` is the I/O
shell around it.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

import httptools

from .request import Request

__all__ = [
    "ALLOW", "MAX_FIELD_BYTES", "MAX_HEAD_BYTES", "MAX_HEADERS", "MAX_TARGET_BYTES", "NEED_DATA",
    "ProtocolError", "Request", "RequestParser", "ServerConnection", "date_line", "header_lines",
    "http_date", "status_line",
]

# aiohttp's limits before this server (max_line_size / max_field_size 8190):
# a request line or header field longer than any player or CDN sends.
MAX_TARGET_BYTES = 8190
MAX_FIELD_BYTES = 8190
# Header fields in one request: players send about ten.
MAX_HEADERS = 100
# The whole request head, buffered until its blank line: bounds what one
# connection can make us hold before a request exists (h11's
# max_incomplete_event_size).
MAX_HEAD_BYTES = 16 << 10
ALLOW = "GET, HEAD, OPTIONS"
# Request fields that need a closer look (most requests carry none of them).
_BODY_OR_EXPECT = frozenset({b"expect", b"content-length", b"transfer-encoding"})
# Methods as llhttp reports them, decoded once.
_METHODS = {m.encode("ascii"): m for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH")}
# Requests read before, by their bytes, for every connection of the process (`RequestParser._known`): the
# viewers of a stream send the same playlist and segment requests byte for byte. Bounded in entries and in
# the bytes of each (a flood of distinct requests empties it rather than growing it).
MEMO_ENTRIES = 1024
MEMO_BYTES = 1024
_known: dict[bytes, Request] = {}


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""`next_event()` has nothing complete to return: feed more bytes."""


class ProtocolError(Exception):
    """The bytes received are not a request we answer; the connection ends after the answer.

    Attributes:
        status: the HTTP status to answer with (h11's `error_status_hint`).
        reason: one line saying what was wrong (sent in the body).
        headers: extra response headers (`Allow` on a 405).
    """

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.reason!r})"


class RequestParser:
    """The request half of one HTTP/1.x server connection: bytes in, events appended to `events`.

    Args:
        max_target: longest request target; longer is a 414.
        max_field: longest header field (name and value); longer is a 431.
        max_headers: most header fields; more is a 431.
        max_head: most bytes buffered for one incomplete request head; more is a 431.
        events: the deque complete events are appended to (the connection's queue).

    Raises:
        ValueError: a limit is not positive (the message names it).
    """

    __slots__ = ("max_target", "max_field", "max_headers", "max_head", "_parser", "_events", "_url",
                 "_headers", "_head_size", "_in_head", "_tail", "_partial", "_error", "_data", "_at_start",
                 "_clean", "_memo")

    def __init__(self, *, max_target: int = MAX_TARGET_BYTES, max_field: int = MAX_FIELD_BYTES,
                 max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD_BYTES,
                 events: collections.deque[Request | ProtocolError]) -> None:
        for name, value in (("max_target", max_target), ("max_field", max_field),
                            ("max_headers", max_headers), ("max_head", max_head)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.max_target, self.max_field = max_target, max_field
        self.max_headers, self.max_head = max_headers, max_head
        self._parser = httptools.HttpRequestParser(self)
        self._events = events
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_size = 0  # bytes of the current head's complete fields
        self._in_head = False  # between a request's first byte and its blank line
        self._tail = b""  # the last 3 bytes received, to find a blank line split across reads
        self._partial = 0  # bytes received since the last blank line
        self._error = False
        self._data = b""  # the bytes being fed, while they are: llhttp does not say which protocol it read
        # llhttp waits for a request's first byte: everything fed so far ended a bodiless kept request's head.
        self._at_start = True
        self._clean = True  # every request read so far was bodiless and kept the connection
        # The process's memo of requests read (`_known`), for parsers with the default limits (the
        # listener's): from where llhttp waits for a request, the same bytes are the same request.
        defaults = (MAX_TARGET_BYTES, MAX_FIELD_BYTES, MAX_HEADERS, MAX_HEAD_BYTES)
        self._memo = _known if (max_target, max_field, max_headers, max_head) == defaults else None

    # --- the public side ---

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received on the connection; complete requests are appended to `events`.

        Args:
            data: the bytes, in order. After a `ProtocolError` has been queued
                the connection is done: further bytes are ignored.
        """
        if self._error or not data:
            return
        events, memo = self._events, self._memo if self._at_start else None
        if memo is not None:
            known = memo.get(data)
            if known is not None:  # read before from where llhttp is now: llhttp would say the same again
                events.append(Request(known.method, known.target, "1.1", dict(known.headers), True))
                return
        self._at_start = False
        before = len(events)
        self._data = data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            # A callback below refused the request (a limit, the version, Expect).
            cause = e.__context__
            self._fail(cause if isinstance(cause, ProtocolError) else ProtocolError(400, "bad request"))
            return
        except httptools.HttpParserInvalidMethodError:
            self._fail(ProtocolError(405, "method not allowed", (("allow", ALLOW),)))
            return
        except httptools.HttpParserUpgrade:
            # The request was queued at its blank line; we do not switch protocols,
            # so nothing after it can be read as HTTP: answer it, then close.
            if self._events and isinstance(self._events[-1], Request):
                self._events[-1].keep_alive = False
            self._error = True
            return
        except httptools.HttpParserError as e:
            last = self._events[-1] if self._events else None
            if isinstance(last, Request) and not last.keep_alive:
                self._error = True  # bytes after a request that closes the connection: never read
            else:
                self._fail(ProtocolError(400, f"bad request: {str(e)[:120] or type(e).__name__}"))
            return
        finally:
            self._data = b""  # not kept: an idle connection holds no read
        if self._clean and not self._in_head and data[-4:] == b"\r\n\r\n":
            self._at_start = True  # llhttp is where it was before the first request
            if memo is not None and len(events) == before + 1 and len(data) <= MEMO_BYTES:
                # Read whole from where llhttp waits for a request, and it left llhttp there again.
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                request = events[-1]
                if type(request) is Request:
                    memo[data] = Request(request.method, request.target, request.version, dict(request.headers),
                                         True)
            return
        if self._in_head:
            # llhttp buffers nothing itself, but httptools holds a header field
            # until it is complete: bound what an unfinished head can make us keep.
            seen = self._tail + data
            blank = seen.rfind(b"\r\n\r\n")
            self._partial = len(seen) - blank - 4 if blank >= 0 else self._partial + len(data)
            if self._partial > self.max_head:
                self._fail(ProtocolError(431, f"request head larger than {self.max_head} bytes"))
                return
            self._tail = data[-3:]

    @property
    def head_started(self) -> bool:
        """Whether part of a request head (its target at least) was received and its blank line was not."""
        return self._in_head

    def stop(self) -> None:
        """Read no more requests: every byte from now on is ignored (the connection is being closed)."""
        self._error = True

    def _fail(self, error: ProtocolError) -> None:
        self._events.append(error)
        self._error = True

    def _is_rtsp(self, url: bytes, version: str) -> bool:
        """Whether the request line said `RTSP/x.y` (llhttp reads it as well as HTTP, and does not say).

        Asked off the hot path, for versions other than 1.1 (`RTSP/1.1` does not exist). A request
        line split across reads is not seen whole, and passes as HTTP.
        """
        return self._data.find(b"%s RTSP/%s" % (url, version.encode("ascii"))) >= 0

    # --- httptools callbacks (called from inside feed_data) ---

    # A request's state is reset when its head completes (not in an
    # on_message_begin callback: one Python call fewer per request).

    def on_url(self, url: bytes) -> None:
        self._in_head = True  # the request line has started
        url = self._url + url if self._url else url  # llhttp may hand the target over in pieces
        if len(url) > self.max_target:
            raise ProtocolError(414, f"request target longer than {self.max_target} bytes")
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > self.max_field:
            raise ProtocolError(431, f"header field {name[:64].decode('latin-1')!r} longer than "
                                     f"{self.max_field} bytes")
        self._head_size += size
        headers = self._headers
        if len(headers) >= self.max_headers or self._head_size > self.max_head:
            raise ProtocolError(431, f"more than {self.max_headers} header fields or {self.max_head} bytes")
        key = name.lower()
        if key in headers:
            headers[key] += b", " + value
        else:
            headers[key] = value

    def on_headers_complete(self) -> None:
        parser, headers, url = self._parser, self._headers, self._url
        self._in_head = False
        self._partial = 0
        self._url = b""
        self._headers = {}
        self._head_size = 0
        self._tail = b""
        # Origin form (a path) is the common case and costs one index; absolute form is the other.
        absolute = url[0] != 0x2F and url[:8].lower().startswith((b"http://", b"https://")) if url else False
        version = parser.get_http_version()
        if version != "1.1":
            if self._is_rtsp(url, version):
                # Not an HTTP version we lack (that is a 505) but another protocol: a malformed
                # HTTP request line (RFC 9112 §3), the client's mistake.
                raise ProtocolError(400, f"RTSP/{version} is not HTTP: this is an HTTP/1.1 server, "
                                         f"an RTSP client needs an RTSP server")
            if version == "0.9":  # what llhttp makes of a request line with no (readable) version
                raise ProtocolError(400, "bad request line: no HTTP version after the target")
            if version != "1.0":
                raise ProtocolError(505, f"HTTP/{version} is not supported, use HTTP/1.1")
        elif b"host" not in headers and not absolute:
            raise ProtocolError(400, "HTTP/1.1 request without Host")  # RFC 9112 §3.2
        try:
            target = url.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(400, "request target is not valid UTF-8") from None
        if absolute:
            # Absolute form, which a server must accept (RFC 9112 §3.2.2): the
            # target's authority stands for Host, and the rest is the target.
            _, _, rest = target.partition("://")
            cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            authority, target = rest[:cut], rest[cut:]
            target = target if target.startswith("/") else "/" + target
            headers[b"host"] = authority.encode("utf-8")
        keep = parser.should_keep_alive()
        if not headers.keys().isdisjoint(_BODY_OR_EXPECT):
            expect = headers.get(b"expect")
            if expect is not None and expect.lower() != b"100-continue":
                raise ProtocolError(417, "only Expect: 100-continue is understood")
            # A body is never read (GET/HEAD/OPTIONS need none; other methods get a 405):
            # such a request ends the connection, so no `100 Continue` is ever owed.
            if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
                keep = False
            self._clean = False  # a body llhttp may expect: from here on only llhttp knows where it is
        if not keep or version != "1.1":
            self._clean = False
        method = parser.get_method()
        self._events.append(Request(_METHODS.get(method) or method.decode("ascii"), target, version, headers, keep))


# --- responses ----------------------------------------------------------------

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_NO_BODY = frozenset({204, 304})
LAST_CHUNK = b"0\r\n\r\n"


def status_line(status: int) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n` (we answer HTTP/1.0 clients with 1.1, as RFC 9110 §6.2 allows)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode("latin-1")
    return line


# Names whose usual spelling is not their title case.
_SPELLED = {"etag": "ETag", "www-authenticate": "WWW-Authenticate", "content-md5": "Content-MD5", "te": "TE"}
_SPELLING: dict[str, str] = {}


def spelled(name: str) -> str:
    """A header name as HTTP/1.1 peers usually see it (`content-type` -> `Content-Type`), memoised."""
    out = _SPELLING.get(name)
    if out is None:
        out = _SPELLED.get(name.lower()) or name.title()
        if len(_SPELLING) < 1024:  # bounded, though the names are ours (stored ones are an allow-list)
            _SPELLING[name] = out
    return out


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header fields serialized, each `Name: value\\r\\n`; values outside Latin-1 go out as UTF-8.

    Names are spelled for HTTP/1.1 (`spelled()`): the engine and the front keep them lower-case.
    """
    out = []
    for name, value in headers:
        if "\r" in value or "\n" in value:  # never let a stored value split the head
            value = value.replace("\r", " ").replace("\n", " ")
        line = f"{spelled(name)}: {value}\r\n"
        try:
            out.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            out.append(line.encode("utf-8", "surrogateescape"))
    return b"".join(out)


class Fields(Protocol):
    """What a response's status and header fields must offer (`livecdn.front.plan.Fields`)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    wire: Any  # this module keeps the serialized fields here (a `_Wire`)
    wire_h2: Any  # the HTTP/2 connection keeps its own here


class _Wire:
    """One `Fields`' serialized head, kept on it: built once, the per-second tail spliced in."""

    __slots__ = ("prefix", "second", "age", "length", "head")

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix  # status line and header fields
        self.second = -1  # the whole head below is for this second, age and length
        self.age = -1
        self.length = -1
        self.head = b""


class _Framing(enum.Enum):
    NONE = "none"  # HEAD, 204, 304: a head alone
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # HTTP/1.0 and a length not known: the connection's end delimits the body


# Requests parsed ahead of the one being answered (HTTP pipelining), and the
# bytes parsed at a time once more than a small read waits: a client cannot
# make us hold more parsed work than it lets us answer (aiohttp's
# MAX_MSG_QUEUE_SIZE), and one large read is not parsed whole first.
MAX_PENDING = 16
PARSE_SLICE = 2048


class ServerConnection:
    """Both directions of one HTTP/1.x server connection (no sockets, no clock).

    Requests come out of `next_event()` in the order received; each is answered
    in that order, by `respond()` or by `send_head()`, `send_data()`...,
    `send_end()`. After each answer `must_close` says whether the connection
    ends: the client asked for it, the request was an error, a shutdown
    started (`start_closing()`), or a body broke (`send_failed()`).

    Args:
        max_pending: requests parsed ahead of the one being answered. Bytes past
            them wait unparsed in `backlog` (one read's worth: the shell stops
            reading meanwhile), so a client that pipelines without reading
            costs that much memory, not a queued request per 40 bytes it sent.
        limits: `RequestParser`'s (max_target, max_field, max_headers, max_head).

    Raises:
        ValueError: a limit is not positive (the message names it).
    """

    __slots__ = ("events", "backlog", "must_close", "max_pending", "parser", "parse", "_closing", "_framing",
                 "_answering")

    def __init__(self, *, max_pending: int = MAX_PENDING, last: bool = False, **limits: int) -> None:
        """`last`: opened during a graceful shutdown, its first answer is its last ("Connection: close")."""
        if max_pending < 1:
            raise ValueError(f"max_pending must be positive, got {max_pending!r}")
        # Parsed requests in order; `next_event()` takes from the left, and so may
        # an I/O shell that has already seen the queue is not empty (then it
        # calls `parse_backlog()` when the queue runs dry, as `next_event()` does).
        self.events: collections.deque[Request | ProtocolError] = collections.deque()
        self.backlog = bytearray()  # received, not parsed yet: `max_pending` requests are waiting
        self.max_pending = max_pending
        # Parse now, whatever the queue holds: for an I/O shell's small read
        # (at most PARSE_SLICE) when nothing waits in `backlog`, the hit path's
        # call; anything else goes through `receive_data()`.
        self.parser = RequestParser(events=self.events, **limits)
        self.parse = self.parser.receive_data
        self.must_close = False  # the connection ends after the answer being sent
        self._closing = last
        self._framing = _Framing.NONE
        self._answering = False

    # --- requests in ---

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received; complete requests queue up for `next_event()` (see `RequestParser`).

        At most `max_pending` requests are parsed ahead; the rest of the bytes
        wait in `backlog`, in order, until the queue is taken.
        """
        if not self.backlog and len(data) <= PARSE_SLICE and len(self.events) < self.max_pending:
            self.parse(data)  # the common read: one request or a few
            return
        self.backlog += data
        self.parse_backlog()

    def parse_backlog(self) -> None:
        """Parse waiting bytes, a slice at a time, until `max_pending` requests wait or none are left."""
        backlog, events, limit = self.backlog, self.events, self.max_pending
        taken = 0
        while taken < len(backlog) and len(events) < limit:
            self.parse(bytes(backlog[taken:taken + PARSE_SLICE]))
            taken += PARSE_SLICE
        del backlog[:taken]

    def next_event(self) -> Request | ProtocolError | _NeedData:
        """The next complete request, or the error that ends the connection, or `NEED_DATA`.

        Returns:
            A `Request` (in the order received), a `ProtocolError` (always the
            last event of a connection: its answer, `respond(None, ...)`,
            closes it), or `NEED_DATA`.
        """
        if not self.events and self.backlog:
            self.parse_backlog()
        return self.events.popleft() if self.events else NEED_DATA

    @property
    def pending(self) -> int:
        """Requests parsed and not yet taken (the pipeline a client has queued)."""
        return len(self.events)

    @property
    def head_started(self) -> bool:
        """Part of a request was received and not all of it: a timeout now is a 408, not an idle close."""
        return self.parser.head_started

    def discard(self) -> None:
        """The connection is ending: drop what waits and ignore whatever the client sends from now on."""
        self.parser.stop()
        self.events.clear()
        self.backlog.clear()
        self.must_close = True

    def start_closing(self) -> None:
        """A graceful shutdown began: the answer being sent, or the next, is the last."""
        self._closing = True
        if not self._answering:
            self.must_close = True

    # --- answers out ---

    def respond(self, request: Request | None, fields: Fields, body: bytes | memoryview, born: float | None,
                now: float) -> tuple[bytes | memoryview, ...]:
        """A whole answer whose body is in hand: the buffers to write, in order.

        Args:
            request: the request answered (None: the bytes were no request, see `next_event()`).
            fields: status and header fields.
            body: the body (sent unless the request is HEAD or the status is 204/304).
            born: when the answer was generated upstream, for Age (None: no Age field).
            now: the wall-clock time, for Age and Date.
        """
        length = len(body)
        wire = fields.wire
        if wire is None:
            wire = fields.wire = _Wire(status_line(fields.status) + header_lines(fields.headers))
        if (request is not None and request.keep_alive and not self._closing
                and not self._answering and request.version == "1.1" and fields.status not in _NO_BODY):
            # The common answer (a hit on a kept HTTP/1.1 connection): its head is
            # cached whole per (second, age, length), so nothing is spliced.
            age = -1 if born is None else (int(now - born) if now > born else 0)
            second = int(now)
            if wire.second != second or wire.age != age or wire.length != length:
                wire.second, wire.age, wire.length = second, age, length
                wire.head = b"".join((wire.prefix, b"Content-Length: %d\r\n" % length,
                                      b"Age: %d\r\n" % age if age >= 0 else b"", date_line(now), b"\r\n"))
            if request.method == "HEAD" or not length:
                return (wire.head,)
            return (wire.head, body)
        self._start(request, fields.status, length)
        head = self._head(request, fields, length, born, now)
        self._answering = False
        if self._framing is _Framing.NONE or not length:
            return (head,)
        return (head, body)

    def send_head(self, request: Request, fields: Fields, length: int | None, born: float | None,
                  now: float) -> bytes:
        """The head of an answer whose body follows in `send_data()` calls (length None: not known)."""
        self._start(request, fields.status, length)
        return self._head(request, fields, length, born, now)

    def send_data(self, data: bytes | memoryview) -> tuple[bytes | memoryview, ...]:
        """One piece of the body, framed."""
        if not self._answering:
            raise RuntimeError("send_data() without send_head()")
        framing = self._framing
        if framing is _Framing.CHUNKED:
            return (b"%x\r\n" % len(data), data, b"\r\n")
        if framing is _Framing.NONE:
            return ()
        return (data,)

    def send_end(self) -> bytes:
        """The body is complete: what ends it on the wire (the last chunk, or nothing)."""
        if not self._answering:
            raise RuntimeError("send_end() without send_head()")
        self._answering = False
        if self._closing:
            self.must_close = True  # a shutdown began while this body was sent
        return LAST_CHUNK if self._framing is _Framing.CHUNKED else b""

    def send_failed(self) -> None:
        """The body broke after the head went out: the connection must end, never the body."""
        self._answering = False
        self.must_close = True

    @property
    def sends_body(self) -> bool:
        """Whether the answer begun carries body bytes (not HEAD, 204 or 304)."""
        return self._framing is not _Framing.NONE

    def _start(self, request: Request | None, status: int, length: int | None) -> None:
        if self._answering:
            raise RuntimeError("an answer is already being sent on this connection")
        self._answering = True
        if request is None or not request.keep_alive or self._closing:
            self.must_close = True
        if status in _NO_BODY or (request is not None and request.method == "HEAD"):
            self._framing = _Framing.NONE
        elif length is not None:
            self._framing = _Framing.LENGTH
        elif request is None or request.version == "1.1":
            self._framing = _Framing.CHUNKED
        else:
            self._framing = _Framing.CLOSE
            self.must_close = True

    def _head(self, request: Request | None, fields: Fields, length: int | None, born: float | None,
              now: float) -> bytes:
        wire = fields.wire
        if type(wire) is not _Wire:
            wire = fields.wire = _Wire(status_line(fields.status) + header_lines(fields.headers))
        version = "1.1" if request is None else request.version
        if fields.status in _NO_BODY:
            size = b""
        elif length is not None:
            size = b"Content-Length: %d\r\n" % length
        elif version == "1.1" and self._framing is not _Framing.CLOSE:
            size = b"Transfer-Encoding: chunked\r\n"  # also on a HEAD: what a GET would get
        else:
            size = b""
        if self.must_close:
            connection = b"Connection: close\r\n"
        else:
            connection = b"" if version == "1.1" else b"Connection: keep-alive\r\n"
        age = b"" if born is None else b"Age: %d\r\n" % (int(now - born) if now > born else 0)
        return b"".join((wire.prefix, size, age, date_line(now), connection, b"\r\n"))


def http_date(ts: float) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7) for a Unix time."""
    return formatdate(ts, usegmt=True)


_date_cache: list[object] = [-1, b""]


def date_line(now: float) -> bytes:
    """`Date: ...\\r\\n` for `now`, built once per second."""
    second = int(now)
    if _date_cache[0] != second:
        _date_cache[0] = second
        _date_cache[1] = f"Date: {http_date(second)}\r\n".encode("ascii")
    return _date_cache[1]  # type: ignore[return-value]
