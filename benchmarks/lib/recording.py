"""viewers.py's players run inside a driver, recording each request and stall for per-window figures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import viewers
from viewers import Request, percentile

__all__ = ["MAX_VIEWER_SECONDS", "Recorder", "playing", "viewer_window"]

MAX_VIEWER_SECONDS = 900.0  # simulate()'s own bound; a driver stops its viewers far earlier
RAMP = 2.0  # seconds over which the viewers join


@dataclass
class Recorder:
    """What the viewers of one run did, as it happened; `result` is simulate()'s once they stopped."""

    requests: list[Request] = field(default_factory=list)
    stalls: list[tuple[int, float, float]] = field(default_factory=list)  # viewer, dry since, refilled at
    lag: list[tuple[float, float]] = field(default_factory=list)  # when, ms late (the driver's own event loop)
    result: dict[str, Any] = field(default_factory=dict)

    def stall(self, viewer: int, dry: float, refilled: float) -> None:
        self.stalls.append((viewer, dry, refilled))


@contextlib.asynccontextmanager
async def playing(master: str, count: int, source: str, seed: int) -> AsyncIterator[Recorder]:
    """`count` players following `master` until the block ends; what they recorded (result set on exit)."""
    rec = Recorder()
    stop = asyncio.Event()
    task = asyncio.create_task(viewers.simulate(master, count, MAX_VIEWER_SECONDS, RAMP, seed, source,
                                                on_request=rec.requests.append, on_stall=rec.stall, stop=stop))
    lag = asyncio.create_task(viewers.watch_loop_lag(lambda when, ms: rec.lag.append((when, ms))))
    try:
        await asyncio.sleep(0)
        yield rec
    finally:
        stop.set()
        lag.cancel()
        rec.result = await task
        await asyncio.gather(lag, return_exceptions=True)


def viewer_window(rec: Recorder, t0: float, t1: float) -> dict[str, Any]:
    """What the viewers saw between t0 and t1: segments completed, latency, stalls, errors."""
    seg = [(r.end - r.start) * 1000 for r in rec.requests
           if r.url.endswith(".ts") and r.status == 200 and t0 <= r.end < t1]
    errors = sum(1 for r in rec.requests if r.status != 200 and t0 <= r.end < t1)
    events = [(v, a, b) for v, a, b in rec.stalls if a < t1 and b > t0]
    lag = [ms for t, ms in rec.lag if t0 <= t < t1]
    return {
        "segments": len(seg),
        "segment_ms": {"p50": round(percentile(seg, 50), 1), "p99": round(percentile(seg, 99), 1),
                       "max": round(max(seg, default=0.0), 1)},
        "stalls": sum(1 for _, a, _ in events if t0 <= a < t1),
        "stall_seconds": round(sum(min(b, t1) - max(a, t0) for _, a, b in events), 3),
        "stalled_viewers": len({v for v, _, _ in events}),
        "errors": errors,
        "loop_lag_ms_p99": round(percentile(lag, 99), 1),
    }
