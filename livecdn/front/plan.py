"""A response plan: what to answer, with no word of how a protocol frames it.

The front (`livecdn/front/answers.py`) turns (request, engine answer) into a
`Plan`: a status and header fields (`Fields`), the time the answer was born
(for Age), and one body source: bytes in memory, a range of a disk-tier file
(`FileRange`), or a fill still streaming from upstream (`Stream`). The
protocol shell (`livecdn/front/listener.py` over `livecdn/front/http1.py`
today, an HTTP/2 stream later) frames and writes it. Nothing here knows
HTTP/1.1: no Content-Length, Date, Connection or chunking.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

from livecdn.cache.engine import Attachment, UpstreamBroken
from livecdn.cache.fill import Asked, CacheResult
from livecdn.cache.keys import CacheKey

from .request import Request

__all__ = ["Body", "BodyBroken", "Fields", "FileRange", "Later", "Plan", "Stream"]

BodyBroken = UpstreamBroken
"""Raised by a `Stream` whose upstream body broke: the shell must cut the response, never end it cleanly."""


class Fields:
    """A status and end-to-end header fields, names as they are sent.

    A stored object's fields are built once and shared by every hit on it, so
    each protocol shell may keep its own serialized form: HTTP/1.1 in `wire`,
    HTTP/2 in `wire_h2` (whatever they like; the front never reads them).
    """

    __slots__ = ("status", "headers", "wire", "wire_h2")

    def __init__(self, status: int, headers: tuple[tuple[str, str], ...]) -> None:
        self.status = status
        self.headers = headers
        self.wire: object = None
        self.wire_h2: object = None

    def __repr__(self) -> str:
        return f"Fields({self.status}, {len(self.headers)} headers)"


class FileRange:
    """Bytes [start, stop) of an open disk-tier file (sent with sendfile where the loop has it)."""

    __slots__ = ("file", "start", "stop")

    def __init__(self, file: BinaryIO, start: int, stop: int) -> None:
        self.file, self.start, self.stop = file, start, stop

    async def pieces(self, step: int) -> AsyncIterator[bytes]:
        """The bytes read off the loop, `step` at a time (where sendfile cannot be used)."""
        loop = asyncio.get_running_loop()
        fd, pos, stop = self.file.fileno(), self.start, self.stop
        while pos < stop:
            data = await loop.run_in_executor(None, os.pread, fd, min(step, stop - pos), pos)
            if not data:
                raise OSError(f"disk file ended at byte {pos} of {stop}")
            yield data
            pos += len(data)


class Stream:
    """Bytes [start, stop) of a fill's shared body, as they arrive (stop None: to its end)."""

    __slots__ = ("attachment", "start", "stop")

    def __init__(self, attachment: Attachment, start: int, stop: int | None) -> None:
        self.attachment, self.start, self.stop = attachment, start, stop

    def chunks(self, writer: Callable[[memoryview], bool] | None = None) -> AsyncIterator[memoryview]:
        """The body's pieces at the fill's pace; raises `BodyBroken` if the upstream body breaks.

        `writer` writes what arrives while the caller waits (see `Attachment.chunks`): an empty piece then
        means its transport is full.
        """
        return self.attachment.chunks(self.start, self.stop, writer)

    @property
    def sent(self) -> int:
        """The body bytes handed out so far (to the caller and its writer)."""
        return self.attachment.pos - self.start


Body = bytes | memoryview | FileRange | Stream


class Plan:
    """One answer to send.

    Args:
        fields: status and header fields.
        body: the body source (b"" for none; HEAD and 304 answers send no body whatever it is).
        length: the body's length, None when a stream's end is not known yet.
        born: wall-clock time the answer was generated upstream; the protocol shell sends
            Age from it (the one place Age is computed); None: no Age field.
        cache: how the request was answered, for the access log (None: not a cache answer, e.g. CORS preflight).
        release: called once the answer is sent or abandoned (closes a file, leaves a fill).
        upstream: the fetch from the tier above behind the answer, for the access log (None: none asked).
    """

    __slots__ = ("fields", "body", "length", "born", "cache", "release", "upstream")

    def __init__(self, fields: Fields, body: Body, length: int | None, born: float | None, cache: CacheResult | None,
                 release: Callable[[], None] | None = None, upstream: Asked | None = None) -> None:
        self.fields = fields
        self.body = body
        self.length = length
        self.born = born
        self.cache = cache
        self.release = release
        self.upstream = upstream

    def close(self) -> None:
        """Release what the answer holds; safe to call twice."""
        release, self.release = self.release, None
        if release is not None:
            release()

    def __repr__(self) -> str:
        return f"Plan({self.fields.status}, {type(self.body).__name__}, length={self.length}, cache={self.cache})"


class Later:
    """A request the front cannot answer without waiting (disk, admission, a fetch): what it learned so far."""

    __slots__ = ("request", "peer", "key")

    def __init__(self, request: Request, peer: str, key: CacheKey) -> None:
        self.request, self.peer, self.key = request, peer, key
