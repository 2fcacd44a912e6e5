"""HTTP/1.1 toward players, sans-io: request framing in, response heads out.

`RequestParser` is one connection's request side, shaped like h11's
`Connection`: `receive_data(bytes)` feeds it, `next_event()` returns the next
`Request`, a `ProtocolError` (carrying the status to answer with), or
`NEED_DATA`. It wraps `httptools` (llhttp) for the grammar and adds what
llhttp leaves to its user: bounded buffering (header and request-line sizes),
the HTTP version rule, `Expect`, and whether the connection may be kept open.
Response heads are built by pure functions (`response_head`, `http_date`).
Nothing here knows about sockets, the event loop or the clock:
`livecdn/listener.py` is the I/O shell around it.
"""

from __future__ import annotations

import collections
from email.utils import formatdate
from http import HTTPStatus
from typing import Iterable

import httptools

__all__ = [
    "MAX_FIELD_BYTES", "MAX_HEAD_BYTES", "MAX_HEADERS", "MAX_TARGET_BYTES", "NEED_DATA",
    "LAST_CHUNK", "ProtocolError", "Request", "RequestParser", "chunk", "connection_line", "date_line",
    "header_lines", "http_date", "reason_phrase", "response_head", "status_line",
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


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""`next_event()` has nothing complete to return: feed more bytes."""


class Request:
    """A request head, complete; the connection's next request to answer.

    `headers` maps lower-cased names to values (bytes); repeated fields are
    joined with ", ". `keep_alive` says whether the client lets the connection
    stay open after the answer (HTTP/1.0 needs `Connection: keep-alive`; a
    request that carries a body is never kept: its body is not read).
    """

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "received")

    def __init__(self, method: str, target: str, version: str, headers: dict[bytes, bytes],
                 keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.received = 0.0  # set by the I/O shell when it times requests (access log)

    def header(self, name: bytes) -> str | None:
        """A header's value as text, by lower-cased name."""
        v = self.headers.get(name)
        return None if v is None else v.decode("latin-1")

    def __repr__(self) -> str:
        return f"Request({self.method} {self.target} HTTP/{self.version}, keep_alive={self.keep_alive})"


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
    """The request side of one HTTP/1.x server connection (no sockets, no clock).

    Args:
        max_target: longest request target; longer is a 414.
        max_field: longest header field (name and value); longer is a 431.
        max_headers: most header fields; more is a 431.
        max_head: most bytes buffered for one incomplete request head; more is a 431.
        events: the deque events are appended to (default: the parser's own).

    Raises:
        ValueError: a limit is not positive (the message names it).
    """

    __slots__ = ("max_target", "max_field", "max_headers", "max_head", "_parser", "_events", "_url",
                 "_headers", "_head_size", "_in_head", "_tail", "_partial", "_error")

    def __init__(self, *, max_target: int = MAX_TARGET_BYTES, max_field: int = MAX_FIELD_BYTES,
                 max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD_BYTES,
                 events: collections.deque[Request | ProtocolError] | None = None) -> None:
        for name, value in (("max_target", max_target), ("max_field", max_field),
                            ("max_headers", max_headers), ("max_head", max_head)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.max_target, self.max_field = max_target, max_field
        self.max_headers, self.max_head = max_headers, max_head
        self._parser = httptools.HttpRequestParser(self)
        # Where complete events queue up; an I/O shell may pass its own queue
        # and take them from there rather than through `next_event()`.
        self._events: collections.deque[Request | ProtocolError] = collections.deque() if events is None else events
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_size = 0  # bytes of the current head's complete fields
        self._in_head = False  # between a request's first byte and its blank line
        self._tail = b""  # the last 3 bytes received, to find a blank line split across reads
        self._partial = 0  # bytes received since the last blank line
        self._error = False

    # --- the public side ---

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received on the connection; complete requests queue up for `next_event()`.

        Args:
            data: the bytes, in order. After a `ProtocolError` has been queued
                the connection is done: further bytes are ignored.
        """
        if self._error or not data:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            # A callback below refused the request (a limit, the version, Expect).
            cause = e.__context__
            self._fail(cause if isinstance(cause, ProtocolError) else ProtocolError(400, "bad request"))
            return
        except httptools.HttpParserInvalidMethodError:
            self._fail(ProtocolError(405, "method not allowed", (("Allow", ALLOW),)))
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
                self._fail(ProtocolError(400, f"bad request: {_describe(e)}"))
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

    def next_event(self) -> Request | ProtocolError | _NeedData:
        """The next complete request, or the error that ends the connection, or `NEED_DATA`.

        Returns:
            A `Request` (in the order received), a `ProtocolError` (always the
            last event of a connection), or `NEED_DATA` when nothing is complete.
        """
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    @property
    def pending(self) -> int:
        """Events parsed and not yet taken."""
        return len(self._events)

    def _fail(self, error: ProtocolError) -> None:
        self._events.append(error)
        self._error = True

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
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise ProtocolError(505, f"HTTP/{version} is not supported, use HTTP/1.1")
        elif b"host" not in headers:
            raise ProtocolError(400, "HTTP/1.1 request without Host")  # RFC 9112 §3.2
        try:
            target = url.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(400, "request target is not valid UTF-8") from None
        keep = parser.should_keep_alive()
        if not headers.keys().isdisjoint(_BODY_OR_EXPECT):
            expect = headers.get(b"expect")
            if expect is not None and expect.lower() != b"100-continue":
                raise ProtocolError(417, "only Expect: 100-continue is understood")
            # A body is never read (GET/HEAD/OPTIONS need none; other methods get a 405):
            # such a request ends the connection, so no `100 Continue` is ever owed.
            if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
                keep = False
        method = parser.get_method()
        self._events.append(Request(_METHODS.get(method) or method.decode("ascii"), target, version, headers, keep))


# --- responses ----------------------------------------------------------------

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_NO_BODY = frozenset({204, 304})


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def status_line(status: int) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n` (we answer HTTP/1.0 clients with 1.1, as RFC 9110 §6.2 allows)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode("latin-1")
    return line


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header fields serialized, each `Name: value\\r\\n`; values outside Latin-1 go out as UTF-8."""
    out = []
    for name, value in headers:
        if "\r" in value or "\n" in value:  # never let a stored value split the head
            value = value.replace("\r", " ").replace("\n", " ")
        line = f"{name}: {value}\r\n"
        try:
            out.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            out.append(line.encode("utf-8", "surrogateescape"))
    return b"".join(out)


def connection_line(keep_alive: bool, version: str) -> bytes:
    """What the head says about the connection: nothing for a kept HTTP/1.1 one."""
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"" if version == "1.1" else b"Connection: keep-alive\r\n"


def response_head(status: int, headers: Iterable[tuple[str, str]], *, length: int | None,
                  keep_alive: bool, version: str, date: bytes) -> bytes:
    """A complete response head.

    Args:
        status: the status code.
        headers: end-to-end fields (no Content-Length, Date or Connection).
        length: the body's length; None for a body of unknown length, sent
            chunked to HTTP/1.1 clients (the caller must not keep an HTTP/1.0
            connection open then: its end delimits the body). 204 and 304 carry
            no length.
        keep_alive: whether the connection stays open after this answer.
        version: the request's HTTP version ("1.1" or "1.0").
        date: the Date line (`date_line()`).
    """
    if status in _NO_BODY:
        framing = b""
    elif length is not None:
        framing = b"Content-Length: %d\r\n" % length
    elif version == "1.1":
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        framing = b""
    return b"".join((status_line(status), header_lines(headers), framing, date,
                     connection_line(keep_alive, version), b"\r\n"))


def chunk(data: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """One piece of a chunked body, as three buffers to write without copying `data`."""
    return b"%x\r\n" % len(data), data, b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


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


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:120]
