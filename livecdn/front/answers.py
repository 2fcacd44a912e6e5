"""The player-facing HTTP front: parse, ask the engine, send the answer.

It holds no cache policy. What it owns is HTTP toward players: methods, CORS,
conditional requests (304), byte ranges (206/416), HEAD, gzip for playlists,
Age, and sendfile for bodies the disk tier keeps as files. Edge and shield
both serve through it; the edge adds a policy that may refuse a request
before the engine sees it.

Requests arrive from the player listener (`livecdn/listener.py`) already
parsed (`livecdn/http1.py`). `answer_now()` answers everything that needs no
waiting, right there in the listener's callback: a memory hit costs the
engine's dictionary lookup and one `writelines` of a head built once per
stored object (only Age, Date and the connection line are spliced in, and
those once per second) and the body, which is never copied. What needs
waiting (disk, a fetch, a guard refresh) goes to `answer_later()`, awaited by
the connection's task, which keeps answers in request order.
"""

from __future__ import annotations

import asyncio
import os
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, BinaryIO, Callable, Protocol

from livecdn import metrics
from livecdn.cache.engine import Answer, Engine, UpstreamBroken
from livecdn.front.http1 import (
    LAST_CHUNK, ProtocolError, Request, chunk, connection_line, date_line, header_lines, response_head,
    status_line,
)
from livecdn.cache.keys import BadRequest, CacheKey, cache_key
from livecdn.cache.stored import Stored
from livecdn.front.negotiate import etag_matches, parse_range

if TYPE_CHECKING:
    from livecdn.front.listener import PlayerConnection
    from livecdn.logs import AccessLog

__all__ = ["ALLOWED_METHODS", "CORS", "PREFLIGHT", "Policy", "PlayerFront"]

ALLOWED_METHODS = "GET, HEAD, OPTIONS"
CORS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Age, Content-Length, Content-Range, Date, ETag, X-Cache"),
)
PREFLIGHT = CORS + (
    ("Access-Control-Allow-Methods", ALLOWED_METHODS),
    ("Access-Control-Allow-Headers", "Range, If-None-Match, If-Modified-Since, Origin, Accept, Accept-Encoding"),
    ("Access-Control-Max-Age", "86400"),
)
# Request targets remembered with their cache key, so a hit skips normalizing
# its path again. Bounded: a flood of distinct targets (tokens, busters)
# empties it rather than growing it.
KEY_MEMO_BOUND = 4096
# Bytes read from a disk-tier file per step where the loop has no sendfile
# (uvloop): one step is written and drained before the next is read.
FILE_CHUNK = 256 << 10
# Request fields that make a hit more than the stored 200 (see `_send_stored`).
NEGOTIATING = frozenset({b"range", b"if-none-match", b"if-modified-since"})


class Policy(Protocol):
    """A node's say over requests, consulted by the front (the edge has one).

    The two per-request hooks are attributes, bound once, so that a hit calls
    them directly, or not at all when the policy has nothing to do there (None).
    """

    screen: Callable[[str], None] | None
    """Every request, before anything else, with the client address; raises `BadRequest` to refuse."""

    seen: Callable[[CacheKey, str], None] | None
    """A request was answered with this cache result."""

    async def admit(self, key: CacheKey, client: str) -> None:
        """A request the memory tier cannot answer; raise `BadRequest` to refuse."""


class _Prebuilt:
    """The constant part of one stored object's 200 head, and the whole head for this second.

    `prefix` runs from the status line through Content-Length; what varies per
    answer is Age, Date and the connection line. The complete head for the
    common case (HTTP/1.1, kept alive) is cached per (age, second).
    """

    __slots__ = ("prefix", "prefix_gzip", "stamp", "head", "head_gzip")

    def __init__(self, prefix: bytes, prefix_gzip: bytes | None) -> None:
        self.prefix = prefix
        self.prefix_gzip = prefix_gzip
        self.stamp = -1
        self.head = b""
        self.head_gzip = b""


def _not_modified(request: Request, etag: str | None, last_modified: str | None) -> bool:
    inm = request.header(b"if-none-match")
    if inm is not None:
        return etag is not None and etag_matches(inm, etag)
    ims = request.header(b"if-modified-since")
    if ims and last_modified:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


def _range(request: Request, etag: str | None, size: int) -> tuple[int, int] | None | bool:
    if_range = request.header(b"if-range")
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return None  # the client's copy is different: send the whole object
    return parse_range(request.header(b"range"), size)


def _negotiate(request: Request, headers: dict[str, str], size: int | None) -> tuple[int, int, int | None]:
    """Conditional request and byte range against a 200 of `size` bytes (None: not known yet).

    Returns:
        (status, start, stop): 304 or 416 (no body), 206 with the range, or 200.
        `headers` gains Accept-Ranges / Content-Range, or loses Content-Type for a 304.
    """
    etag = headers.get("ETag")
    if _not_modified(request, etag, headers.get("Last-Modified")):
        headers.pop("Content-Type", None)
        return 304, 0, 0
    if size is None:
        return 200, 0, None  # streamed with its length unknown: no ranges
    headers["Accept-Ranges"] = "bytes"
    rng = _range(request, etag, size)
    if rng is False:
        headers["Content-Range"] = f"bytes */{size}"
        return 416, 0, 0
    if rng:
        start, stop = rng
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return 206, start, stop
    return 200, 0, size


async def _copy_file(conn: PlayerConnection, file: BinaryIO, start: int, stop: int) -> None:
    """Send bytes [start, stop) of `file`: blocking reads on a thread, writes drained per chunk."""
    loop = asyncio.get_running_loop()
    fd = file.fileno()
    pos = start
    while pos < stop:
        data = await loop.run_in_executor(None, os.pread, fd, min(FILE_CHUNK, stop - pos), pos)
        if not data:
            raise OSError(f"disk file ended at byte {pos} of {stop}")
        conn.write(data)
        pos += len(data)
        await conn.drain()


class PlayerFront:
    """HTTP semantics toward players, for one node process.

    Args:
        engine: the node's cache engine.
        node: the node's name (Via, metrics).
        policy: the node's policy hooks, or None.
        access_log: where access records go, or None (then nothing on the hot path logs).
    """

    def __init__(self, engine: Engine, node: str, policy: Policy | None = None,
                 access_log: AccessLog | None = None) -> None:
        self.engine = engine
        self.node = node
        self.policy = policy
        self.access = access_log
        self.inflight = 0
        self._via = f"1.1 {node} (livecdn)"
        self._counters = {c: metrics.REQUESTS.labels(node, c) for c in metrics.CACHE_RESULTS}
        self._inflight_gauge = metrics.INFLIGHT.labels(node)
        self._screen: Callable[[str], None] | None = None
        self._seen: Callable[[CacheKey, str], None] | None = None
        self.rebind()
        self.hits = 0  # memory hits not yet added to the request counter (see `count()`)
        self._keys: dict[str, CacheKey] = {}

    # --- the listener's entry points ---

    def answer_now(self, request: Request, conn: PlayerConnection) -> CacheKey | None:
        """Answer `request` without waiting if that is possible.

        Returns:
            None when the answer has been written; otherwise the request's key,
            to be passed to `answer_later()` (memory could not answer it; the
            policy's `screen` has already been consulted).
        """
        if self.access is not None:
            request.received = time.perf_counter()
        method = request.method
        if method != "GET" and method != "HEAD":
            if method == "OPTIONS":
                self._write(conn, request, 204, PREFLIGHT, b"", "")
            else:
                self._counters["rejected"].inc()
                self._plain(conn, request, 405, f"method {method} not allowed", (("Allow", ALLOWED_METHODS),))
            return None
        try:
            key = self._keys.get(request.target)
            if key is None:
                key = cache_key(request.target)
                if len(self._keys) >= KEY_MEMO_BOUND:
                    self._keys.clear()
                self._keys[request.target] = key
            if self._screen is not None:
                self._screen(conn.peer)
            now = time.time()
            obj = self.engine.hit(key, now)
        except BadRequest as e:
            self._counters["rejected"].inc()
            self._plain(conn, request, e.status, e.reason, e.headers)
            return None
        if obj is None:
            return key
        self.hits += 1
        if self._seen is not None:
            self._seen(key, "hit")
        self._send_stored(conn, request, obj, "hit", now)
        return None

    def rebind(self) -> None:
        """Take the policy's per-request hooks again (after the policy changed them)."""
        policy = self.policy
        self._screen = policy.screen if policy is not None else None
        self._seen = policy.seen if policy is not None else None

    def count(self) -> None:
        """Add the memory hits counted since the last call to the request counter.

        A hit only bumps an integer; the node calls this every second and
        before metrics are read, so Prometheus costs nothing per hit.
        """
        if self.hits:
            self._counters["hit"].inc(self.hits)
            self.hits = 0

    async def answer_later(self, request: Request, key: CacheKey, conn: PlayerConnection) -> None:
        """Answer a request memory could not: the policy's admission, then the engine."""
        self.inflight += 1
        self._inflight_gauge.inc()
        try:
            policy = self.policy
            try:
                if policy is not None:
                    await policy.admit(key, conn.peer)
                answer = await self.engine.get(key)
            except BadRequest as e:
                self._counters["rejected"].inc()
                self._plain(conn, request, e.status, e.reason, e.headers)
                return
            try:
                self._counters[answer.cache].inc()
                if self._seen is not None:
                    self._seen(key, answer.cache)
                if answer.obj is not None:
                    if answer.file is None:
                        self._send_stored(conn, request, answer.obj, answer.cache, time.time())
                    else:
                        await self._send_file(conn, request, answer)
                else:
                    await self._send_stream(conn, request, answer)
            finally:
                answer.close()
        finally:
            self.inflight -= 1
            self._inflight_gauge.dec()

    def refuse(self, error: ProtocolError, conn: PlayerConnection) -> None:
        """Answer bytes that are not a request we serve; the connection closes after it."""
        self._counters["rejected"].inc()
        conn.must_close = True
        body = f"{error.status} {error.reason}\n".encode()
        headers = (("Via", self._via), ("X-Cache", "REJECTED"), *CORS, *error.headers,
                   ("Content-Type", "text/plain; charset=utf-8"))
        conn.writelines((response_head(error.status, headers, length=len(body), keep_alive=False,
                                       version="1.1", date=date_line(time.time())), body))

    # --- writing answers ---

    def _write(self, conn: PlayerConnection, request: Request, status: int,
               headers: tuple[tuple[str, str], ...] | list[tuple[str, str]], body: bytes | memoryview,
               cache: str, length: int | None = None) -> None:
        """One whole answer whose body is in hand."""
        keep = conn.keep_alive(request)
        head = response_head(status, headers, length=len(body) if length is None else length,
                             keep_alive=keep, version=request.version, date=date_line(time.time()))
        if request.method == "HEAD" or not body:
            conn.write(head)
            sent = 0
        else:
            conn.writelines((head, body))
            sent = len(body)
        if self.access is not None:
            self.access.log(conn.peer, request, status, sent, cache)

    def _plain(self, conn: PlayerConnection, request: Request, status: int, reason: str,
               extra: tuple[tuple[str, str], ...] = ()) -> None:
        headers = (("Via", self._via), ("X-Cache", "REJECTED"), *CORS, *extra,
                   ("Content-Type", "text/plain; charset=utf-8"))
        self._write(conn, request, status, headers, f"{status} {reason}\n".encode(), "rejected")

    def _headers(self, pairs: tuple[tuple[str, str], ...], cache: str, born: float,
                 now: float) -> dict[str, str]:
        headers = dict(pairs)
        headers.update(CORS)
        headers["Age"] = str(max(0, int(now - born))) if born else "0"
        headers["Via"] = self._via
        headers["X-Cache"] = cache.upper()
        return headers

    def _send_stored(self, conn: PlayerConnection, request: Request, obj: Stored, cache: str,
                     now: float) -> None:
        """A stored answer whose body is in memory."""
        h = request.headers
        if obj.status == 200 and cache == "hit" and h.keys().isdisjoint(NEGOTIATING):
            self._send_prebuilt(conn, request, obj, now)
            return
        headers = self._headers(obj.headers, cache, obj.born, now)
        if obj.status != 200:
            self._write(conn, request, obj.status, list(headers.items()), obj.body, cache)
            return
        if obj.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        status, start, stop = _negotiate(request, headers, obj.size)
        if status == 200 and obj.gzipped is not None and b"gzip" in h.get(b"accept-encoding", b""):
            headers["Content-Encoding"] = "gzip"
            body: bytes | memoryview = obj.gzipped
        elif status == 200:
            body = obj.body
        else:
            body = memoryview(obj.body)[start:stop]
        self._write(conn, request, status, list(headers.items()), body, cache)

    def _send_prebuilt(self, conn: PlayerConnection, request: Request, obj: Stored, now: float) -> None:
        """The hit fast path: a whole 200 of a memory object, its head built once."""
        pre: _Prebuilt | None = obj.head
        if pre is None:
            pre = obj.head = self._prebuild(obj)
        gz = pre.prefix_gzip is not None and b"gzip" in request.headers.get(b"accept-encoding", b"")
        keep = conn.keep_alive(request)
        age = int(now - obj.born) if now > obj.born else 0
        if keep and request.version == "1.1":
            stamp = (age << 40) | int(now)
            if pre.stamp != stamp:
                pre.stamp = stamp
                tail = b"Age: %d\r\n%s\r\n" % (age, date_line(now))
                pre.head = pre.prefix + tail
                pre.head_gzip = pre.prefix_gzip + tail if pre.prefix_gzip is not None else b""
            head = pre.head_gzip if gz else pre.head
        else:
            head = b"".join(((pre.prefix_gzip if gz else pre.prefix), b"Age: %d\r\n" % age, date_line(now),
                             connection_line(keep, request.version), b"\r\n"))
        body = obj.gzipped if gz else obj.body
        if request.method == "HEAD":
            conn.write(head)
            sent = 0
        else:
            conn.writelines((head, body))  # type: ignore[arg-type]
            sent = len(body)  # type: ignore[arg-type]
        if self.access is not None:
            self.access.log(conn.peer, request, 200, sent, "hit")

    def _prebuild(self, obj: Stored) -> _Prebuilt:
        headers = dict(obj.headers)
        headers.update(CORS)
        headers["Via"] = self._via
        headers["X-Cache"] = "HIT"
        if obj.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        headers["Accept-Ranges"] = "bytes"
        fields = header_lines(headers.items())
        prefix = b"%s%sContent-Length: %d\r\n" % (status_line(200), fields, obj.size)
        prefix_gzip = None
        if obj.gzipped is not None:
            prefix_gzip = b"%s%sContent-Encoding: gzip\r\nContent-Length: %d\r\n" % (
                status_line(200), fields, len(obj.gzipped))
        return _Prebuilt(prefix, prefix_gzip)

    async def _send_file(self, conn: PlayerConnection, request: Request, answer: Answer) -> None:
        """A stored answer whose body is a disk-tier file: the head, then sendfile."""
        obj, file = answer.obj, answer.file
        assert obj is not None and file is not None
        now = time.time()
        headers = self._headers(obj.headers, answer.cache, obj.born, now)
        if obj.status != 200:  # never happens today: errors are small, kept in SQLite
            self._write(conn, request, obj.status, list(headers.items()), file.read(), answer.cache)
            return
        status, start, stop = _negotiate(request, headers, obj.size)
        assert stop is not None
        if status in (304, 416):
            self._write(conn, request, status, list(headers.items()), b"", answer.cache)
            return
        keep = conn.keep_alive(request)
        conn.write(response_head(status, list(headers.items()), length=stop - start, keep_alive=keep,
                                 version=request.version, date=date_line(now)))
        sent = 0
        if request.method != "HEAD":
            transport = conn.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("player went away")
            try:
                await asyncio.get_running_loop().sendfile(transport, file, start, stop - start, fallback=False)
            except (NotImplementedError, RuntimeError, asyncio.SendfileNotAvailableError):
                # uvloop has no loop.sendfile: read the file off the loop, write at the player's pace.
                await _copy_file(conn, file, start, stop)
            sent = stop - start
        if self.access is not None:
            self.access.log(conn.peer, request, status, sent, answer.cache)

    async def _send_stream(self, conn: PlayerConnection, request: Request, answer: Answer) -> None:
        """An answer arriving from upstream: written chunk by chunk at the player's pace."""
        head, stream = answer.head, answer.stream
        assert head is not None and stream is not None
        headers = self._headers(head.headers, answer.cache, head.born, time.time())
        if head.body:
            self._write(conn, request, head.status, list(headers.items()), head.body, answer.cache)
            return
        start, stop, status = 0, head.length, head.status
        if head.status == 200:
            status, start, stop = _negotiate(request, headers, head.length)
            if status in (304, 416):
                self._write(conn, request, status, list(headers.items()), b"", answer.cache)
                return
        keep = conn.keep_alive(request)
        chunked = stop is None and request.version == "1.1"
        if stop is None and not chunked:
            keep = False  # an HTTP/1.0 body of unknown length ends with the connection
            conn.must_close = True
        conn.write(response_head(status, list(headers.items()), length=None if stop is None else stop - start,
                                 keep_alive=keep, version=request.version, date=date_line(time.time())))
        sent = 0
        if request.method != "HEAD" and status not in (204, 304):
            try:
                async for piece in stream.chunks(start, stop):
                    if chunked:
                        conn.writelines(chunk(piece))
                    else:
                        conn.write(piece)
                    sent += len(piece)
                    await conn.drain()
            except UpstreamBroken:
                # Never let a truncated body pass for a whole one: cut the connection.
                conn.cut()
                return
            if chunked:
                conn.write(LAST_CHUNK)
        if self.access is not None:
            self.access.log(conn.peer, request, status, sent, answer.cache)
