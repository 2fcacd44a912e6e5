"""The player-facing HTTP front: parse, ask the engine, stream the answer.

It holds no cache policy. What it owns is HTTP toward players: methods, CORS,
conditional requests (304), byte ranges (206/416), HEAD, gzip for playlists,
Age, and sendfile for bodies the disk tier keeps as files. Edge and shield
both serve through it; the edge adds a guard that may refuse a name before
the engine sees it.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime
from typing import Protocol

from aiohttp import web

from . import metrics
from .engine import Answer, Engine, UpstreamBroken
from .keys import BadRequest, CacheKey, cache_key
from .validators import etag_matches, parse_range

__all__ = ["Policy", "PlayerFront"]

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


class Policy(Protocol):
    """A node's say over requests, consulted by the front (the edge has one)."""

    def screen(self, client: str) -> None:
        """Every request, before anything else; raise `BadRequest` to refuse."""

    async def admit(self, key: CacheKey, client: str) -> None:
        """A request the memory tier cannot answer; raise `BadRequest` to refuse."""

    def seen(self, key: CacheKey, cache: str) -> None:
        """A request was answered with this cache result."""


def _not_modified(request: web.Request, etag: str | None, last_modified: str | None) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        return etag is not None and etag_matches(inm, etag)
    ims = request.headers.get("If-Modified-Since")
    if ims and last_modified:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


class PlayerFront:
    """The aiohttp handler of a node's player listener."""

    def __init__(self, engine: Engine, node: str, policy: Policy | None = None) -> None:
        self.engine = engine
        self.node = node
        self.policy = policy
        self.inflight = 0
        self._via = f"1.1 {node} (livecdn)"
        self._counters = {c: metrics.REQUESTS.labels(node, c) for c in metrics.CACHE_RESULTS}
        self._inflight_gauge = metrics.INFLIGHT.labels(node)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        self._inflight_gauge.inc()
        try:
            return await self._handle(request)
        finally:
            self.inflight -= 1
            self._inflight_gauge.dec()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=204, headers=PREFLIGHT)
        if method not in ("GET", "HEAD"):
            self._counters["rejected"].inc()
            return self._plain(405, f"method {method} not allowed", (("Allow", ALLOWED_METHODS),))
        policy, client = self.policy, request.remote or ""
        try:
            key = cache_key(request.raw_path)
            if policy is not None:
                policy.screen(client)
            obj = self.engine.hit(key, time.time())
            if obj is not None:
                answer = Answer("hit", obj)
            else:
                if policy is not None:
                    await policy.admit(key, client)
                answer = await self.engine.get(key)
        except BadRequest as e:
            self._counters["rejected"].inc()
            return self._plain(e.status, e.reason, e.headers)
        try:
            self._counters[answer.cache].inc()
            if policy is not None:
                policy.seen(key, answer.cache)
            if answer.obj is not None:
                return await self._send_stored(request, answer)
            return await self._send_stream(request, answer)
        finally:
            answer.close()

    def _plain(self, status: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> web.Response:
        headers = {"Via": self._via, "X-Cache": "REJECTED", **dict(CORS), **dict(extra)}
        return web.Response(status=status, text=f"{status} {reason}\n", headers=headers)

    def _headers(self, pairs: tuple[tuple[str, str], ...], cache: str, born: float) -> dict[str, str]:
        headers = dict(pairs)
        headers.update(CORS)
        headers["Age"] = str(max(0, int(time.time() - born))) if born else "0"
        headers["Via"] = self._via
        headers["X-Cache"] = cache.upper()
        return headers

    async def _send_stored(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        obj = answer.obj
        assert obj is not None
        headers = self._headers(obj.headers, answer.cache, obj.born)
        if obj.status != 200:
            return web.Response(status=obj.status, body=obj.body, headers=headers)
        if obj.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if _not_modified(request, obj.etag, obj.last_modified):
            headers.pop("Content-Type", None)
            return web.Response(status=304, headers=headers)
        headers["Accept-Ranges"] = "bytes"
        rng = self._range(request, obj.etag, obj.size)
        if rng is False:
            headers["Content-Range"] = f"bytes */{obj.size}"
            return web.Response(status=416, headers=headers)
        start, stop = rng if rng else (0, obj.size)
        status = 206 if rng else 200
        if rng:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{obj.size}"
        if answer.file is not None:
            return await self._sendfile(request, answer, headers, status, start, stop)
        if not rng and obj.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(status=200, body=obj.gzipped, headers=headers)
        body = obj.body if not rng else memoryview(obj.body)[start:stop]
        return web.Response(status=status, body=body, headers=headers)

    def _range(self, request: web.Request, etag: str | None, size: int) -> tuple[int, int] | None | bool:
        if_range = request.headers.get("If-Range")
        if if_range is not None and (etag is None or if_range.strip() != etag):
            return None  # the client's copy is different: send the whole object
        return parse_range(request.headers.get("Range"), size)

    async def _sendfile(self, request: web.Request, answer: Answer, headers: dict[str, str],
                        status: int, start: int, stop: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = stop - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        await asyncio.get_running_loop().sendfile(transport, answer.file, start, stop - start)  # type: ignore[arg-type]
        await resp.write_eof()
        return resp

    async def _send_stream(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        head, stream = answer.head, answer.stream
        assert head is not None and stream is not None
        headers = self._headers(head.headers, answer.cache, head.born)
        if head.body:
            return web.Response(status=head.status, body=head.body, headers=headers)
        start, stop, status = 0, head.length, head.status
        if head.status == 200:
            etag = headers.get("ETag")
            if _not_modified(request, etag, headers.get("Last-Modified")):
                headers.pop("Content-Type", None)
                return web.Response(status=304, headers=headers)
            if head.length is not None:
                headers["Accept-Ranges"] = "bytes"
                rng = self._range(request, etag, head.length)
                if rng is False:
                    headers["Content-Range"] = f"bytes */{head.length}"
                    return web.Response(status=416, headers=headers)
                if rng:
                    start, stop = rng
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{head.length}"
        resp = web.StreamResponse(status=status, headers=headers)
        if stop is not None:
            resp.content_length = stop - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            async for chunk in stream.chunks(start, stop):
                await resp.write(chunk)
        except UpstreamBroken:
            # Never let a truncated body pass for a whole one: cut the connection.
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp
