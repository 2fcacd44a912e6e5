"""benchorigin.py's counting pass-through, with every segment (.ts) answer held back first.

    cd benchmarks && python -m tools.delayproxy --port P --upstream URL --delay-ms MS

The prefetch figure's slow origin: playlists pass at once, segments take MS
ms longer, so a first request that finds the segment already fetched (a
prefetch) is told apart from one that waited for the origin.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tools.benchorigin import Handler, forwarding_handler, pass_through_main

__all__ = ["delaying_handler"]


def delaying_handler(upstream: str, delay_ms: int) -> Handler:
    forward = forwarding_handler(upstream.rstrip("/"))

    async def handle(request: web.Request) -> web.Response:
        if request.path.endswith(".ts"):
            await asyncio.sleep(delay_ms / 1000)
        return await forward(request)

    return handle


def main() -> None:
    pass_through_main(__doc__, lambda a: delaying_handler(a.upstream, a.delay_ms),
                      ("--delay-ms", {"type": int, "default": 0}))


if __name__ == "__main__":
    main()
