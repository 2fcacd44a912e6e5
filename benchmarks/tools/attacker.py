"""The guard's attacker: requests for random names, as fast as the edge answers, from one client address.

    cd benchmarks && python -m tools.attacker --port P --requests N [--source ADDR] [--connections C]

Prints one JSON line: answered, seconds, status mix, by kind, latency.

A bare client of its own (lib/rawhttp.py), not wrk: wrk cannot bind a
source address, and the point is a client address of its own, so
per-client limits and the guard's per-client share see the attacker alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

import httptools

from lib.rawhttp import Connection, ConnectionClosed
from viewers import percentile

__all__ = ["attack", "attack_path"]

SOURCE = "127.0.0.9"
CONNECTIONS = 64  # keep-alive connections, one request in flight on each
REQUEST_TIMEOUT = 10.0  # one answer; the edge answers a refusal in well under a millisecond
RECONNECT_PAUSE = 0.05  # after a failed request, so a refusing edge is not hammered with connects


def attack_path(rng: random.Random) -> tuple[str, str]:
    """(kind, path) of one random name: 60% under the real stream, 30% elsewhere, 10% playlists elsewhere."""
    r = rng.random()
    name, folder = f"{rng.getrandbits(48):012x}", f"{rng.getrandbits(32):08x}"
    if r < 0.6:
        return "stream_ts", f"/live/720p/{name}.ts"
    if r < 0.9:
        return "other_ts", f"/{folder}/{name}.ts"
    return "other_m3u8", f"/{folder}/{name}.m3u8"


async def attack(host: str, port: int, source: str, requests: int, connections: int, seed: int,
                 max_seconds: float) -> dict[str, Any]:
    """`requests` random-name GETs over `connections` keep-alive connections, stopping after `max_seconds`."""
    rng = random.Random(seed)
    left = requests
    outcomes: Counter[tuple[str, str, str]] = Counter()  # (kind, status, X-Cache)
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal left
        conn: Connection | None = None
        try:
            while left > 0 and time.monotonic() < deadline:
                left -= 1
                kind, path = attack_path(rng)
                t = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = await asyncio.wait_for(Connection.open(host, port, source), REQUEST_TIMEOUT)
                    answer = await asyncio.wait_for(conn.get(path), REQUEST_TIMEOUT)
                except (TimeoutError, OSError, ConnectionClosed, httptools.HttpParserError) as e:
                    outcomes[(kind, "error", type(e).__name__)] += 1
                    if conn is not None:
                        conn.close()
                    await asyncio.sleep(RECONNECT_PAUSE)
                    continue
                latencies.append((time.monotonic() - t) * 1000)
                outcomes[(kind, str(answer.status), answer.header("X-Cache"))] += 1
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    ended = time.monotonic()
    status: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}
    for (kind, st, xc), n in outcomes.items():
        status[st] += n
        kinds.setdefault(kind, Counter())[f"{st} {xc}".strip()] += n
    done = sum(n for (_, st, _), n in outcomes.items() if st != "error")
    return {
        "requests": requests, "sent": requests - left, "answered": done, "errors": status.get("error", 0),
        "start": started, "end": ended, "seconds": round(ended - started, 3),
        "per_second": round(done / (ended - started), 1) if ended > started else 0.0,
        "status": dict(sorted(status.items())),
        "by_kind": {k: dict(sorted(c.items())) for k, c in sorted(kinds.items())},
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1),
                       "max": round(max(latencies, default=0.0), 1)},
        "timed_out": left > 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default=SOURCE)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=300.0)
    a = p.parse_args()
    result = asyncio.run(attack(a.host, a.port, a.source, a.requests, a.connections, a.seed, a.max_seconds))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
