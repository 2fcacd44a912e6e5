"""Simulated low-latency HLS viewers, cheap enough that a thousand of them measure the CDN, not themselves.

Each viewer does what hls.js does in lowLatencyMode at the live edge: it
holds a blocking reload for the next part (`_HLS_msn`/`_HLS_part` of the
preload hint) on one connection and fetches the hinted part beside it on
another; each answer names the next hint. It records, per part
("msn.part"), when its blocking reload was sent, when its answer was whole
(stamped by the parser in the read callback) and when the viewer's task
resumed with it (CLOCK_MONOTONIC, the same in every process of the machine,
so a driver can set these against when the origin had the part). The two
answer stamps differ by the simulator's own queue: 500 viewers answered in the
same millisecond each run a task (send the next reload, fetch the next part)
one after the other, and the last resumes ~60 ms after its answer arrived.

The viewers use the raw httptools client (`lib.rawhttp`) on uvloop, and a
driver runs them in several processes: with aiohttp's client in one
process, 1,000 viewers (4,000 requests a second) kept the simulator's own
loop seconds behind and the figure measured the simulator.

Run standalone, it prints one JSON line:

    llviewers.py 127.0.1.1:8080,127.0.2.1:8080 /live/360p/index.m3u8 --viewers 500 --seconds 20 --first 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import NamedTuple
from urllib.parse import urljoin

import httptools
import uvloop

from lib.rawhttp import Connection, ConnectionClosed
from viewers import client_address, preload_hint

__all__ = ["LowLatencyViewer", "run_viewers"]

# Reload and part answers arrive within this many seconds or count as failures (a hold lasts 3 targets).
REQUEST_TIMEOUT = 10.0


class LowLatencyViewer:
    """One simulated LL-HLS player on `host:port`, from the local address `source`."""

    def __init__(self, host: str, port: int, media: str, source: str) -> None:
        self.host, self.port, self.media, self.source = host, port, media, source
        # part → (reload sent, its answer whole in the read callback, the viewer's task resumed with it)
        self.answered: dict[str, tuple[float, float, float]] = {}
        self.parts = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the live edge until `stop` is set (a request in flight then is finished, not cut)."""
        reloads = await Connection.open(self.host, self.port, self.source, keep_body=True)
        parts = await Connection.open(self.host, self.port, self.source)
        try:
            first = await self._get(reloads, self.media)
            hint = preload_hint(first.text) if first is not None else None
            while hint is not None and not stop.is_set():
                uri, msn, part = hint
                name, sent = f"{msn}.{part}", time.monotonic()
                reload = asyncio.ensure_future(self._get(reloads, f"{self.media}?_HLS_msn={msn}&_HLS_part={part}"))
                # The task's stamp: when the answer is in, not after the part fetch beside it.
                resumed: list[float] = []
                reload.add_done_callback(lambda _f, resumed=resumed: resumed.append(time.monotonic()))
                if parts.closed:
                    parts = await Connection.open(self.host, self.port, self.source)
                self.parts += await self._get(parts, urljoin(self.media, uri)) is not None
                answer = await reload
                if answer is None:
                    return
                # Done before it was awaited (its part fetch took longer): the task has it now, before the callback.
                self.answered[name] = (sent, answer.completed, resumed[0] if resumed else time.monotonic())
                hint = preload_hint(answer.text)
        finally:
            reloads.close()
            parts.close()

    async def _get(self, conn: Connection, target: str) -> Answer | None:
        """The answer when it is a 200; None (and a failure counted) otherwise."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                r = await conn.get(target)
        except (TimeoutError, ConnectionClosed, OSError, httptools.HttpParserError):
            conn.close()
            self.failures += 1
            return None
        if r.status != 200:
            self.failures += 1
            return None
        return Answer(b"".join(r.chunks).decode(), r.completed)


class Answer(NamedTuple):
    text: str
    completed: float  # CLOCK_MONOTONIC: the answer whole, in the read callback


async def run_viewers(edges: list[tuple[str, int]], media: str, count: int, seconds: float, source: str,
                      first: int) -> dict[str, object]:
    """`count` viewers (numbers `first`…, spread over `edges` in turn) for `seconds`; what each saw."""
    stop = asyncio.Event()
    viewers = [LowLatencyViewer(*edges[i % len(edges)], media, client_address(source, i))
               for i in range(first, first + count)]
    tasks = [asyncio.ensure_future(v.run(stop)) for v in viewers]
    await asyncio.sleep(seconds)
    stop.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    return {"answered": [[name, *times] for v in viewers for name, times in v.answered.items()],
            "parts": sum(v.parts for v in viewers), "failures": sum(v.failures for v in viewers),
            "errors": sorted({repr(e)[:200] for e in done if isinstance(e, BaseException)})}


def main() -> None:
    p = argparse.ArgumentParser(description="Simulated LL-HLS viewers; prints one JSON line.")
    p.add_argument("edges", help="HOST:PORT[,HOST:PORT...] the viewers take in turn")
    p.add_argument("media", help="the media playlist's path")
    p.add_argument("--viewers", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--source", default="127.102", help="viewers connect from PREFIX.0.1, PREFIX.0.2, ...")
    p.add_argument("--first", type=int, default=0, help="the number of this process's first viewer")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.viewers + 256)), hard))
    edges = [(h, int(port)) for h, port in (e.rsplit(":", 1) for e in args.edges.split(","))]
    print(json.dumps(uvloop.run(run_viewers(edges, args.media, args.viewers, args.seconds, args.source,
                                            args.first))), flush=True)


if __name__ == "__main__":
    main()
