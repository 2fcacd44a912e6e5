"""A counting origin for the data-path benchmarks, run as its own process.

    cd benchmarks && python -m tools.benchorigin --port P [--upstream URL] [--object-bytes N]

Two modes, one per listener:

- synthetic (no `--upstream`): `GET /d{MS}/{dir}/n{N}.m3u8` answers at once
  a VOD media playlist announcing `seg0.ts` .. `seg{N-1}.ts` of that directory
  (an edge's guard serves only announced names); any other `GET /d{MS}/...`
  waits MS milliseconds, then answers `--object-bytes` bytes derived from the
  path (so every client of one URL must get the same bytes, and two URLs differ);
- pass-through (`--upstream URL`): forwards every GET (with its conditional
  headers) to URL and relays the answer, so a real origin can be counted.

Either way it counts requests per path; `GET /_counts` answers them as JSON
(`/_counts` itself is not counted) and `GET /_ready` answers 200 once up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["Handler", "application", "forwarding_handler", "object_body", "pass_through_main", "run",
           "synthetic_handler"]

Handler = Callable[[web.Request], Awaitable[web.Response]]
COUNTS = web.AppKey("counts", Counter)
SESSION = web.AppKey("session", aiohttp.ClientSession)
DELAYED = re.compile(r"/d(\d+)/")
PLAYLIST = re.compile(r"/n(\d+)\.m3u8$")
TARGET_DURATION = 2
FORWARDED_REQUEST = ("If-None-Match", "If-Modified-Since", "Range", "Accept-Encoding")
RELAYED_RESPONSE = ("Content-Type", "Cache-Control", "ETag", "Last-Modified", "Age",
                    "Content-Encoding", "Content-Range", "Expires")


def object_body(path: str, size: int) -> bytes:
    """The deterministic body of a synthetic object: its path's hash, repeated."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


async def counts(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[COUNTS]))


async def ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def announcing_playlist(count: int) -> str:
    """A VOD media playlist of `count` segments named seg0.ts, seg1.ts, ..."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{TARGET_DURATION}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for i in range(count):
        lines += [f"#EXTINF:{TARGET_DURATION:.3f},", f"seg{i}.ts"]
    return "\n".join(lines + ["#EXT-X-ENDLIST", ""])


def synthetic_handler(size: int) -> Handler:
    """`/d{MS}/.../n{N}.m3u8`: a playlist at once; `/d{MS}/...`: sleep MS ms, then the path's body."""

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        request.app[COUNTS][path] += 1
        m = DELAYED.match(path)
        if m is None:
            return web.Response(status=404, text="404 expected /d{MS}/...\n")
        if listed := PLAYLIST.search(path):
            return web.Response(text=announcing_playlist(int(listed.group(1))),
                                content_type="application/vnd.apple.mpegurl")
        await asyncio.sleep(int(m.group(1)) / 1000)
        headers = {"Content-Type": "video/mp2t", "Cache-Control": "public, max-age=86400"}
        return web.Response(body=object_body(path, size), headers=headers)

    return handle


def forwarding_handler(upstream: str) -> Handler:
    """Relay the request to `upstream` and its answer back, counting the path."""

    async def handle(request: web.Request) -> web.Response:
        request.app[COUNTS][request.path] += 1
        headers = {h: request.headers[h] for h in FORWARDED_REQUEST if h in request.headers}
        async with request.app[SESSION].get(upstream + request.path_qs, headers=headers,
                                            allow_redirects=False) as resp:
            body = await resp.read()
            out = {h: resp.headers[h] for h in RELAYED_RESPONSE if h in resp.headers}
            return web.Response(status=resp.status, body=body, headers=out)

    return handle


def application(handler: Handler, upstream: bool) -> web.Application:
    """`/_counts`, `/_ready`, and `handler` for everything else (with a client session when it forwards)."""
    app = web.Application()
    app[COUNTS] = Counter()
    if upstream:
        app.cleanup_ctx.append(_session)
    app.router.add_get("/_counts", counts)
    app.router.add_get("/_ready", ready)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def _session(app: web.Application) -> AsyncIterator[None]:
    """The forwarding client, opened and closed with the app (it needs the running loop)."""
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app[SESSION].close()


async def serve(app: web.Application, host: str, port: int) -> None:
    """Run `app` until cancelled."""
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int) -> None:
    """serve() until SIGTERM or Ctrl-C (aiohttp turns SIGTERM into a clean stop)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(app, host, port))


def pass_through_main(doc: str, handler: Callable[[argparse.Namespace], Handler],
                      *options: tuple[str, dict[str, Any]]) -> None:
    """The command line of a pass-through tool: --host, --port, --upstream and its own `options`, then run."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    for flag, kw in options:
        p.add_argument(flag, **kw)
    a = p.parse_args()
    run(application(handler(a), upstream=True), a.host, a.port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", help="pass-through mode: forward to this origin")
    p.add_argument("--object-bytes", type=int, default=1 << 20, help="synthetic body size")
    args = p.parse_args()
    if args.upstream:
        run(application(forwarding_handler(args.upstream.rstrip("/")), upstream=True), args.host, args.port)
    else:
        run(application(synthetic_handler(args.object_bytes), upstream=False), args.host, args.port)


if __name__ == "__main__":
    main()
