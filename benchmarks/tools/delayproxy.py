"""benchorigin.py's counting pass-through, with every segment (.ts) answer held back first.

    cd benchmarks && python -m tools.delayproxy --port P --upstream URL --delay-ms MS [--playlist-delay-ms MS]

The prefetch figure's slow origin: playlists pass at once, segments take MS
ms longer, so a first request that finds the segment already fetched (a
prefetch) is told apart from one that waited for the origin. The politeness
figure holds playlists instead (`--playlist-delay-ms`): an origin a network
trip away, or packaging as it answers.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tools.benchorigin import Handler, forwarding_handler, pass_through_main

__all__ = ["delaying_handler"]


def delaying_handler(upstream: str, delay_ms: int, playlist_delay_ms: int = 0) -> Handler:
    forward = forwarding_handler(upstream.rstrip("/"))

    async def handle(request: web.Request) -> web.Response:
        if request.path.endswith(".ts"):
            await asyncio.sleep(delay_ms / 1000)
        elif playlist_delay_ms and request.path.endswith((".m3u8", ".mpd")):
            await asyncio.sleep(playlist_delay_ms / 1000)
        return await forward(request)

    return handle


def main() -> None:
    pass_through_main(__doc__, lambda a: delaying_handler(a.upstream, a.delay_ms, a.playlist_delay_ms),
                      ("--delay-ms", {"type": int, "default": 0}), ("--playlist-delay-ms", {"type": int, "default": 0}))


if __name__ == "__main__":
    main()
