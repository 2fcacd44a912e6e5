"""A programmable origin for tests: each path gets a behaviour, every request is counted.

Behaviours are small async functions, so a test states exactly how the origin
misbehaves (slow, broken mid-body, malformed playlist, down) and checks what
the CDN made of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol, TypeVar

from aiohttp import web

__all__ = ["FakeOrigin", "FileOrigin", "Behaviour", "in_thread", "body", "slow", "dribble", "reset_after", "status"]

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body(data: bytes, content_type: str = "video/mp2t", headers: dict[str, str] | None = None) -> Behaviour:
    """A plain answer; a matching If-None-Match gets a 304 with the same headers."""
    extra = headers or {}

    async def handler(request: web.Request) -> web.StreamResponse:
        etag = extra.get("ETag")
        if etag and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=extra)
        return web.Response(body=data, content_type=content_type, headers=extra)
    return handler


def slow(delay: float, data: bytes, content_type: str = "video/mp2t") -> Behaviour:
    """Think for `delay` seconds, then answer."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.Response(body=data, content_type=content_type)
    return handler


def dribble(data: bytes, pieces: int, pause: float, hold: float = 0.0, chunked: bool = False) -> Behaviour:
    """Send the body in `pieces` parts `pause` seconds apart (Content-Length known, unless `chunked`: a part
    still being made), after holding the request `hold` seconds (a preload hint waits for its part)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(hold)
        resp = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        if not chunked:
            resp.content_length = len(data)
        await resp.prepare(request)
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            await resp.write(data[i:i + step])
            await asyncio.sleep(pause)
        await resp.write_eof()
        return resp
    return handler


def reset_after(data: bytes, sent: int, pause: float = 0.1) -> Behaviour:
    """Promise `len(data)` bytes, send `sent` of them, then reset the connection."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:sent])
        await asyncio.sleep(pause)
        assert request.transport is not None
        request.transport.abort()
        return resp
    return handler


def status(code: int, text: str = "", headers: dict[str, str] | None = None) -> Behaviour:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=text or f"{code}\n", headers=headers)
    return handler


class FakeOrigin:
    """An aiohttp origin on 127.0.0.1, port 0 (over HTTPS with `ssl_context`). Unknown paths answer 404."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.routes: dict[str, Behaviour] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[web.Request] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path_qs] += 1
        self.requests.append(request)
        behaviour = self.routes.get(request.path)
        if behaviour is None:
            return web.Response(status=404, text="not here\n")
        return await behaviour(request)


class FileOrigin(FakeOrigin):
    """An origin serving a directory as a packager's web server would (what ffmpeg writes, for instance).

    Files are read fresh on every request (ffmpeg renames complete files into
    place); ETag and Last-Modified come from aiohttp's static handler. Routes
    set on `routes` still win, so a test can make one name misbehave.
    """

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.routes:
            return await super()._handle(request)
        self.hits[request.path_qs] += 1
        self.requests.append(request)
        path = os.path.realpath(os.path.join(self.root, request.path.lstrip("/")))
        if not path.startswith(os.path.realpath(self.root) + os.sep) or not os.path.isfile(path):
            return web.Response(status=404, text="no such file\n")
        return web.FileResponse(path, headers={"Cache-Control": _cache_control(path)})


def _cache_control(path: str) -> str:
    """What a typical packager's web server says: playlists short-lived, segments long."""
    return "max-age=1" if path.endswith((".m3u8", ".mpd")) else "max-age=3600"


class FakeAdmin:
    """A node's admin listener as the router's health checks see it: only /healthz, on 127.0.0.1, port 0.

    Subclasses say how it answers (`_healthz`); `runner.cleanup()` stops it.
    """

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/healthz"

    async def _healthz(self, request: web.Request) -> web.Response:
        raise NotImplementedError


class Served(Protocol):
    """Anything a test serves from a loop of its own: an origin, a relay in front of one."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


OriginT = TypeVar("OriginT", bound=Served)


@contextlib.contextmanager
def in_thread(origin: OriginT) -> Iterator[OriginT]:
    """Run `origin` on its own loop in a thread, for tests whose own thread blocks (on CDN processes)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(origin.start(), loop).result(10)
    try:
        yield origin
    finally:
        asyncio.run_coroutine_threadsafe(origin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
