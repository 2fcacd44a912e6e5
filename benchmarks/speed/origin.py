"""The speed benchmark's origin: the same bytes for livecdn and every anchor.

    origin.py --port N [--port M ...] [--segment-bytes B]

- `/static/live.m3u8`: a 1 KiB live media playlist (target duration 2 s, no
  ENDLIST, no Cache-Control: each cache applies its own live-playlist TTL).
- `/static/seg.ts`: a 1 MiB segment.
- `/live/master.m3u8`, `/live/720p/index.m3u8`, `/live/720p/segN.ts`: a live
  stream that is a pure function of the wall clock (segment N is published at
  N * 2 s; the playlist lists the last 6), so wrk's viewer script can walk it
  without reading playlist bodies. Segments are 512 KiB (2 s at ~2 Mbit/s)
  of synthetic MPEG-TS packets (`livecdn.origin.synthetic`).

No caching headers on segments either: every cache keeps them long (livecdn
by its own rules, the anchors by their configs in this directory).

Each cache gets a port of its own, so `GET /_counts` (on any port) can say
how often each one asked: `{"PORT": {"playlist": n, "segment": n}}`, requests
(revalidations included) since the start.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections import Counter

from aiohttp import web

from livecdn.origin.synthetic import segment_body

TARGET = 2
WINDOW = 6
SEGMENT_BYTES = 512 << 10
M3U8 = "application/vnd.apple.mpegurl"


def _static_playlist() -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{TARGET}", "#EXT-X-MEDIA-SEQUENCE:1000"]
    n = 1000
    while len("\n".join(lines)) < 1024 - 64:
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:{n // 30 % 60:02d}:{n * 2 % 60:02d}.000Z",
                  "#EXTINF:2.000,", f"seg{n}.ts"]
        n += 1
    lines += ["#EXTINF:2.000,", "seg.ts"]  # the 1 MiB segment below: a name the playlist announces
    text = "\n".join(lines) + "\n"
    return (text + "#" * (1023 - len(text)) + "\n").encode()


STATIC = {
    "/static/live.m3u8": (_static_playlist(), M3U8),
    "/static/seg.ts": (bytes(range(256)) * 4096, "video/mp2t"),
}
MASTER = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720\n720p/index.m3u8\n"
_segments: dict[int, bytes] = {}
_counts: dict[int, Counter[str]] = {}
segment_bytes = SEGMENT_BYTES


def _answer(request: web.Request, body: bytes, ctype: str) -> web.Response:
    etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, headers={"Content-Type": ctype, "ETag": etag})


async def handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path == "/_counts":
        return web.json_response({str(port): dict(c) for port, c in _counts.items()})
    port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
    _counts.setdefault(port, Counter())["playlist" if path.endswith(".m3u8") else "segment"] += 1
    if path in STATIC:
        return _answer(request, *STATIC[path])
    newest = int(time.time() // TARGET)
    if path == "/live/master.m3u8":
        return _answer(request, MASTER, M3U8)
    if path == "/live/720p/index.m3u8":
        first = newest - WINDOW + 1
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{TARGET}", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for n in range(first, newest + 1):
            lines += [f"#EXTINF:{TARGET}.000,", f"seg{n}.ts"]
        return _answer(request, ("\n".join(lines) + "\n").encode(), M3U8)
    if path.startswith("/live/720p/seg") and path.endswith(".ts"):
        try:
            n = int(path[len("/live/720p/seg"):-3])
        except ValueError:
            n = -1
        if newest - 30 <= n <= newest:
            body = _segments.get(n)
            if body is None:
                body = _segments[n] = segment_body("live", "720p", n, segment_bytes)
                for old in [k for k in _segments if k < newest - 30]:
                    del _segments[old]
            return _answer(request, body, "video/mp2t")
    return web.Response(status=404, text="not here\n")


async def serve(ports: list[int]) -> None:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in ports:
        _counts[port] = Counter()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until SIGTERM


def main() -> None:
    global segment_bytes
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, action="append", required=True, help="one per cache (repeat)")
    p.add_argument("--segment-bytes", type=int, default=SEGMENT_BYTES, help="size of the /live/ segments")
    args = p.parse_args()
    segment_bytes = args.segment_bytes
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
