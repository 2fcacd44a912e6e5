"""benchorigin.py's counting pass-through, with every segment (.ts) answer held back first.

    cd benchmarks && python -m tools.delayproxy --port P --upstream URL --delay-ms MS

The prefetch figure's slow origin: playlists pass at once, segments take MS
ms longer, so a first request that finds the segment already fetched (a
prefetch) is told apart from one that waited for the origin.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from tools.benchorigin import Handler, application, forwarding_handler, run

__all__ = ["delaying_handler"]


def delaying_handler(upstream: str, delay_ms: int) -> Handler:
    forward = forwarding_handler(upstream.rstrip("/"))

    async def handle(request: web.Request) -> web.Response:
        if request.path.endswith(".ts"):
            await asyncio.sleep(delay_ms / 1000)
        return await forward(request)

    return handle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args()
    run(application(delaying_handler(a.upstream, a.delay_ms), upstream=True), a.host, a.port)


if __name__ == "__main__":
    main()
