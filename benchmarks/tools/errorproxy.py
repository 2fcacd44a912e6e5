"""benchorigin.py's counting pass-through that answers 500 to everything for a window it is told to.

    cd benchmarks && python -m tools.errorproxy --port P --upstream URL

`GET /_fail?seconds=S[&status=N]` starts the window now: for S seconds every
request is counted and answered N (default 500) without reaching the origin,
as an origin whose application fails while its web server still answers.
The window ends by itself, so a driver that dies mid-run leaves no origin
failing. `/_fail` is not counted; `/_counts` and `/_ready` are benchorigin's.
"""

from __future__ import annotations

import time

from aiohttp import web

from tools.benchorigin import COUNTS, Handler, forwarding_handler, pass_through_main

__all__ = ["failing_handler"]

MAX_FAIL_SECONDS = 600.0  # longer than any figure's window; a typo does not fail the origin for an hour


def failing_handler(upstream: str) -> Handler:
    forward = forwarding_handler(upstream.rstrip("/"))
    window = {"until": 0.0, "status": 500}

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/_fail":
            try:
                seconds = float(request.query.get("seconds", "0"))
                status = int(request.query.get("status", "500"))
            except ValueError:
                return web.Response(status=400, text="400 expected /_fail?seconds=S[&status=N]\n")
            if not 0 <= seconds <= MAX_FAIL_SECONDS or not 400 <= status <= 599:
                return web.Response(status=400, text=f"400 seconds in 0..{MAX_FAIL_SECONDS:g}, status in 400..599\n")
            window.update(until=time.monotonic() + seconds, status=status)
            return web.json_response({"failing_for": seconds, "status": status})
        if time.monotonic() < window["until"]:
            request.app[COUNTS][request.path] += 1
            return web.Response(status=int(window["status"]), text="failing on purpose (tools/errorproxy.py)\n")
        return await forward(request)

    return handle


def main() -> None:
    pass_through_main(__doc__, lambda a: failing_handler(a.upstream))


if __name__ == "__main__":
    main()
