"""The built-in live origin as a node: an HTTP listener in front of a synthetic or ffmpeg source.

It answers like a packager's web server: playlists with short lifetimes, immutable
segments with validators, 404 for what does not exist (yet or any more), 405 for
anything but GET and HEAD. It holds no policy beyond that; the CDN's job is to
protect it.

URL layout: `/{stream}/master.m3u8`, `/{stream}/{rendition}/index.m3u8`,
`/{stream}/{rendition}/seg{N}.ts`, `/healthz`, and `/metrics` (its answers by status class and the bytes
sent, tier "origin", as the caches count theirs: a dashboard shows what reached the origin beside them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from livecdn import metrics
from livecdn.config import OriginConfig, Rendition
from livecdn.front.http1 import http_date
from livecdn.front.negotiate import etag_matches
from livecdn.node.lifecycle import Lifecycle, State
from livecdn.node.sites import Sites
from livecdn.origin import lowlatency as ll
from livecdn.origin.sources import SEGMENT, SEGMENT_MAX_AGE, Body, FfmpegSource, PartStream, Source, SyntheticSource
from livecdn.origin.synthetic import etag_of
from livecdn.origin.timeline import parse_segment_uri

__all__ = ["OriginNode"]

log = logging.getLogger("livecdn.origin")

_ALLOWED = "GET, HEAD"


def _directive(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise ValueError(f"bad {name} value {value[:32]!r}")
    return int(value)


def _not_found(reason: str) -> web.Response:
    return web.Response(status=404, text=f"404 not found: {reason}\n")


class OriginNode(Lifecycle):
    """A running built-in origin: `await start()`, serve, `await stop()`.

    Start once; `stop()` is idempotent and harmless before `start()`.
    """

    __slots__ = ("config", "_source", "_sites", "_port", "_streams", "_renditions")

    def __init__(self, config: OriginConfig) -> None:
        super().__init__(f"origin {config.name!r}")
        self.config = config
        self._source: Source = (FfmpegSource(config) if config.mode == "ffmpeg"
                                else SyntheticSource(config))
        self._streams = frozenset(config.streams)
        self._renditions = frozenset(r.name for r in self._source.renditions)
        self._sites = Sites()
        self._port = 0

    # --- lifecycle ----------------------------------------------------------

    async def _start(self) -> None:
        """Bind the listener, start the source, and return once segments are served.

        In ffmpeg mode this waits for the first segment of every rendition (about one
        target duration).

        Raises:
            RuntimeError: the source cannot start (ffmpeg missing or failing: the
                message says what to do).
            OSError: the listen address cannot be bound.
        """
        app = web.Application(middlewares=[self._counted])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._port = await self._sites.open(app, self.config.listen)
        await self._source.start()
        log.info("origin %s serving %s mode on %s", self.config.name, self.config.mode, self._base_url())

    @web.middleware
    async def _counted(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        response = await handler(request)
        if request.path != "/metrics":
            name = self.config.name
            metrics.RESPONSES.labels(name, "origin", metrics.status_class(response.status)).inc()
            if request.method != "HEAD":
                metrics.SENT_BYTES.labels(name, "origin").inc(response.content_length or 0)  # as declared
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _stop(self, timeout: float) -> None:
        """Stop listening, then stop the source (ffmpeg: terminate, kill after `timeout`)."""
        try:
            # In-flight answers are small (a playlist, one segment): the listeners' short drain is enough.
            await self._sites.close()
        finally:
            await self._source.stop(timeout)

    @property
    def port(self) -> int:
        """The port actually bound (so `listen` port 0 works); only while running."""
        self.require_running()
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the listener, e.g. `http://127.0.0.1:8400`; only while running."""
        self.require_running()
        return self._base_url()

    def _base_url(self) -> str:
        host = self.config.listen.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def renditions(self) -> tuple[Rendition, ...]:
        """The renditions as served (ffmpeg mode may encode them smaller than configured)."""
        return self._source.renditions

    # --- HTTP ---------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return web.Response(status=405, text=f"405 method {request.method} not allowed\n",
                                headers={hdrs.ALLOW: _ALLOWED})
        parts = request.path.split("/")[1:]
        if parts == ["healthz"]:
            if self.state is State.RUNNING and self._source.healthy():
                return web.json_response({"status": "ok", "role": "origin"})
            return web.json_response({"status": "failing", "role": "origin"}, status=503)
        if self.state is not State.RUNNING:
            return web.Response(status=503, text="503 origin is not running\n")
        if not parts or parts[0] not in self._streams:
            return _not_found("no such stream")
        stream = parts[0]
        body: Body | None
        if len(parts) == 2 and parts[1] == "master.m3u8":
            body = self._source.master(stream)
        elif len(parts) == 3 and parts[1] in self._renditions:
            rendition, name = parts[1], parts[2]
            if name == "index.m3u8" and self.config.low_latency:
                return await self._low_latency_media(request, stream, rendition)
            if (part := ll.parse_part_uri(name)) is not None and self.config.low_latency:
                got = await self._source.part(stream, rendition, *part)
                if got is None:
                    return _not_found(f"part {part[0]}.{part[1]} is not available")
                if isinstance(got, PartStream):
                    return await self._stream(request, got)
                body = got
            elif name == "index.m3u8":
                body = await self._source.media(stream, rendition)
                if body is None:
                    return _not_found("no segment published yet")
            elif (seq := parse_segment_uri(name)) is not None:
                body = await self._source.segment(stream, rendition, seq)
                if body is None:
                    return _not_found(f"segment {seq} is not available")
            else:
                return _not_found("no such file")
        else:
            return _not_found("no such rendition or file")
        return self._respond(request, body)

    # --- low latency (rfc8216bis 6.2.5) ----------------------------------------

    async def _low_latency_media(self, request: web.Request, stream: str, rendition: str) -> web.StreamResponse:
        """The LL-HLS playlist; a blocking reload (`_HLS_msn`, `_HLS_part`) is held until its part exists."""
        try:
            msn, part = _directive(request, "_HLS_msn"), _directive(request, "_HLS_part")
        except ValueError as e:
            return web.Response(status=400, text=f"400 {e}\n")
        if part is not None and msn is None:
            return web.Response(status=400, text="400 _HLS_part without _HLS_msn\n")
        skip = request.query.get("_HLS_skip") in ("YES", "v2")
        target = self.config.target_duration
        hold = ll.HOLD_TARGETS * target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while True:
            parts = self._source.parts(stream, rendition)
            if msn is None and parts is not None:
                break
            if msn is not None and parts is not None:
                if parts.too_far(msn):
                    return web.Response(status=400, text=f"400 _HLS_msn={msn} is more than two segments ahead "
                                                         f"of the playlist's last ({parts.last_msn})\n")
                if parts.has(msn, part):
                    break
            left = deadline - loop.time()
            if left <= 0:
                if msn is None:
                    return _not_found("no part published yet")
                return web.Response(status=503, text=f"503 _HLS_msn={msn} not made within {hold:g} s\n",
                                    headers={hdrs.CACHE_CONTROL: f"max-age={int(target)}"})
            await self._source.changed(stream, rendition, left, parts)
        reports = [ll.Report(f"../{r.name}/index.m3u8", *last) for r in self._source.renditions
                   if r.name != rendition and (other := self._source.parts(stream, r.name)) is not None
                   and (last := other.last_part())]
        data = ll.playlist(parts, skip=skip, reports=reports).encode()
        # rfc8216bis Appendix B.1: a blocking answer names one version for ever; a plain one half a target.
        max_age = int(ll.BLOCKING_TARGETS * target) if msn is not None else max(1, int(target / 2))
        return web.Response(body=data, content_type="application/vnd.apple.mpegurl", headers={
            hdrs.CACHE_CONTROL: f"max-age={max_age}", hdrs.ETAG: etag_of(data),
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*"})

    @staticmethod
    async def _stream(request: web.Request, part: PartStream) -> web.StreamResponse:
        """A part being made (a preload hint): its head now, its bytes as they are made."""
        resp = web.StreamResponse(headers={hdrs.CACHE_CONTROL: f"max-age={SEGMENT_MAX_AGE}",
                                           hdrs.CONTENT_TYPE: SEGMENT, hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*"})
        resp.content_length = part.size
        await resp.prepare(request)
        if request.method != hdrs.METH_HEAD:
            async for chunk in part.chunks:
                if chunk:
                    await resp.write(chunk)
        await resp.write_eof()
        return resp

    @staticmethod
    def _respond(request: web.Request, body: Body) -> web.Response:
        headers = {
            hdrs.CACHE_CONTROL: f"max-age={body.max_age}",
            hdrs.ETAG: body.etag,
            hdrs.LAST_MODIFIED: http_date(body.last_modified),
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
        }
        inm = request.headers.get(hdrs.IF_NONE_MATCH)
        if inm is not None:
            if etag_matches(inm, body.etag):
                return web.Response(status=304, headers=headers)
        elif body.content_type == SEGMENT:
            # Dates have one-second resolution and a live playlist can change twice within
            # one second, so only immutable segments are revalidated by date.
            ims = request.if_modified_since
            if ims is not None and int(body.last_modified) <= ims.timestamp():
                return web.Response(status=304, headers=headers)
        return web.Response(body=body.data, content_type=body.content_type, headers=headers)
