"""Guard figure 3: prefetch, the first viewer request for each new segment with and without it.

    .venv/bin/python benchmarks/guard_prefetch.py [--quick] [--head | --tree DIR]   # or guard.py --only prefetch

5 viewers on a one-rendition stream behind tools/delayproxy.py (segment
answers held 300 ms); per new segment, the first viewer request at the edge:
its X-Cache and latency, with and without `[guard] prefetch`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lib.figures import Figure, main
from lib.guardcdn import CDN_PROCESSES, counters_window, snapshot, start_cdn, write_config
from lib.ports import url
from lib.procs import Processes
from lib.recording import Recorder, playing, viewer_window
from lib.topology import Node, start_counting
from viewers import percentile

__all__ = ["FIGURE"]

PREFETCH_VIEWERS = 5
PREFETCH_SOURCE = "127.102"
PREFETCH_SEGMENT_BYTES = 1 << 20  # ~4 Mbit/s of 2 s segments
PREFETCH_DELAY_MS = 300  # the origin's segment answers take this long (delaying proxy)
PREFETCH_SETTLE = 6.0  # seconds after the viewers start: their first segments are history, not news


@dataclass(frozen=True)
class Plan:
    prefetch_seconds: float  # per run and case
    prefetch_runs: int


FULL = Plan(56.0, 2)
QUICK = Plan(26.0, 1)


def first_requests(rec: Recorder, since: float) -> list[tuple[str, str, float]]:
    """(segment, X-Cache, ms) of the first viewer request of each segment first asked for after `since`."""
    first: dict[str, tuple[float, str, float, int]] = {}
    for u, s, e, st, xc in rec.requests:  # viewers.Request: url, start, end, status, X-Cache
        if u.endswith(".ts") and (u not in first or s < first[u][0]):
            first[u] = (s, xc, (e - s) * 1000, st)
    return [(u.rsplit("/", 1)[1], xc, ms) for u, (s, xc, ms, st) in sorted(first.items(), key=lambda x: x[1][0])
            if s >= since and st == 200]


async def prefetch_run(procs: Processes, session: aiohttp.ClientSession, plan: Plan, prefetch: bool,
                       run: int) -> dict[str, Any]:
    async def delaying_proxy(upstream: str) -> int:
        return await start_counting(procs, session, "proxy", "delayproxy",
                                    ["--upstream", upstream, "--delay-ms", str(PREFETCH_DELAY_MS)])

    def config(origin_port: int, proxy: int, shield: Node, edge: Node) -> Path:
        path = procs.workdir / f"prefetch-{prefetch}-{run}.toml"
        write_config(path, origin_port, proxy, shield, edge, streams=["live"], guard={"prefetch": prefetch},
                     segment_bytes=PREFETCH_SEGMENT_BYTES,
                     renditions=[{"name": "720p", "bandwidth": 2_000_000, "width": 1280, "height": 720}])
        return path

    try:
        proxy, shield, edge = await start_cdn(procs, session, config, delaying_proxy)
        t0 = time.monotonic()
        async with playing(url(edge.port) + "/live/master.m3u8", PREFETCH_VIEWERS, PREFETCH_SOURCE, run + 1) as rec:
            await asyncio.sleep(PREFETCH_SETTLE)
            s0 = await snapshot(session, proxy, edge, shield)
            await asyncio.sleep(plan.prefetch_seconds - PREFETCH_SETTLE)
            s1 = await snapshot(session, proxy, edge, shield)
        prefetch_hits = int(s1.edge.total("livecdn_prefetch_hits_total") - s0.edge.total("livecdn_prefetch_hits_total"))
    finally:
        procs.stop(CDN_PROCESSES)
    firsts = first_requests(rec, t0 + PREFETCH_SETTLE)
    window = counters_window(s0, s1)
    playlists = Counter(xc for u, s_, _, st, xc in rec.requests
                        if u.endswith("/index.m3u8") and s_ >= t0 + PREFETCH_SETTLE)
    return {"prefetch": prefetch, "run": run, "firsts": firsts, "playlist_x_cache": dict(playlists),
            "prefetches": window["prefetches"], "prefetch_hits_metric": prefetch_hits,
            "origin_segment_requests": window["origin_segment_requests"],
            "stalls": viewer_window(rec, t0, time.monotonic())["stalls"],
            "viewer_errors": rec.result["errors"]}


def summarize_prefetch(runs: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [f for r in runs for f in r["firsts"]]
    ms = [f[2] for f in firsts]
    mix = Counter(f[1] for f in firsts)
    return {
        "runs": len(runs), "new_segments": len(firsts),
        "hit_share": round(mix.get("HIT", 0) / len(firsts), 3) if firsts else None,
        "x_cache": dict(sorted(mix.items())),
        "first_ms": {"p50": round(percentile(ms, 50), 1), "p90": round(percentile(ms, 90), 1),
                     "max": round(max(ms, default=0.0), 1)},
        "per_run_hit_share": [round(sum(f[1] == "HIT" for f in r["firsts"]) / len(r["firsts"]), 3)
                              if r["firsts"] else None for r in runs],
        "playlist_x_cache": dict(sorted(sum((Counter(r["playlist_x_cache"]) for r in runs), Counter()).items())),
        "prefetches": sum(r["prefetches"] for r in runs),
        "prefetch_hits_metric": sum(r["prefetch_hits_metric"] for r in runs),
        "origin_segment_requests": sum(r["origin_segment_requests"] for r in runs),
        "stalls": sum(r["stalls"] for r in runs),
        "viewer_errors": sum(r["viewer_errors"] or 0 for r in runs),
    }


async def prefetch_figure(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    runs: dict[str, list[dict[str, Any]]] = {"prefetch on": [], "prefetch off": []}
    for run in range(plan.prefetch_runs):
        for name, on in (("prefetch on", True), ("prefetch off", False)):
            r = await prefetch_run(procs, session, plan, on, run)
            runs[name].append(r)
            print(f"  [{name}, run {run + 1}/{plan.prefetch_runs}: {len(r['firsts'])} new segments, "
                  f"{sum(f[1] == 'HIT' for f in r['firsts'])} first requests hit]", flush=True)
    return {"viewers": PREFETCH_VIEWERS, "segment_bytes": PREFETCH_SEGMENT_BYTES, "delay_ms": PREFETCH_DELAY_MS,
            "seconds_per_run": plan.prefetch_seconds,
            "cases": {name: summarize_prefetch(rs) for name, rs in runs.items()},
            "runs": runs}


def print_prefetch(fig: dict[str, Any]) -> None:
    print(f"\n3. prefetch: {fig['viewers']} viewers on one rendition, {fig['segment_bytes'] >> 20} MiB segments, "
          f"origin segment answers delayed {fig['delay_ms']} ms; first viewer request of each new segment")
    print(f"  {'case':<13} {'new segs':>8} {'hit share':>9} {'first-request X-Cache':<34} "
          f"{'p50 ms':>7} {'p90 ms':>7} {'prefetches':>10} {'origin seg req':>14} {'stalls':>6}")
    for name, c in fig["cases"].items():
        mix = ", ".join(f"{k} {v}" for k, v in c["x_cache"].items())
        share = f"{c['hit_share']:.2f}" if c["hit_share"] is not None else "-"
        print(f"  {name:<13} {c['new_segments']:>8} {share:>9} {mix:<34} {c['first_ms']['p50']:>7} "
              f"{c['first_ms']['p90']:>7} {c['prefetches']:>10} {c['origin_segment_requests']:>14} {c['stalls']:>6}")
    for name, c in fig["cases"].items():
        print(f"  {name}: viewers' playlist reloads by X-Cache: "
              + ", ".join(f"{k} {v}" for k, v in c["playlist_x_cache"].items()))


FIGURE = Figure("prefetch", prefetch_figure, print_prefetch)

if __name__ == "__main__":
    sys.exit(main("guard", [FIGURE], __doc__.splitlines()[0], whole=False))
