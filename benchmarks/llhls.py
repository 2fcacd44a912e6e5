"""Low-latency HLS through the CDN (issue 15): what the CDN adds to a low-latency player, and to many.

    cd benchmarks && python llhls.py [--quick] [--only latency,viewers] [--head | --tree DIR]

Figures:

- `latency`: hls.js in `lowLatencyMode` (tests/players/play.mjs, headless
  Chromium) plays the built-in ffmpeg origin's LL-HLS (0.5 s parts, 2 s
  segments) straight from the origin and through shield and edge at the same
  time (same origin, same encoder, both joining at the same moment): hls.js's
  own live latency, each, and what the CDN adds (goal: at most 0.1 s).
- `viewers`: simulated LL viewers (`llviewers.py`, a raw httptools client on
  uvloop, spread over `LLHLS_SIM_PROCESSES` processes, default 2) on two
  edges behind one shield, in front of the synthetic origin's
  LL-HLS behind a counting pass-through: each viewer holds a blocking reload
  for the next part and fetches the preload-hint part beside it, as hls.js
  does. Origin requests per part (goal 1.00: one fetch of each part for every
  viewer, and one blocking reload per part and rendition), and, per part, the
  delay from the moment it is ready (a probe holding blocking reloads at the
  origin itself, uncounted, sees it), or from the reload's sending when that
  was later, to each viewer's blocking reload answer being whole at the
  viewer (goal: p99 at most 50 ms), and to the viewer's task resuming with it
  (that plus the simulator's own queue, which the CDN does not make).

Both runs are bounded (`--quick`: shorter and fewer viewers).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from lib.figures import Figure, main
from lib.ports import free_port, url
from lib.procs import ROOT, Processes
from lib.topology import Node, origin_counts, start_builtin_origin, start_counting, start_nodes, write_topology
from viewers import part_ready_probe, percentile

PLAYERS = ROOT / "tests" / "players"
CACHE = {"disk_path": "", "upstream_timeout": 10}
HERE = Path(__file__).resolve().parent
# Processes the simulated viewers are spread over (at most one per 100 viewers).
SIM_PROCESSES = int(os.environ.get("LLHLS_SIM_PROCESSES", 2))
LL_ORIGIN = {"low_latency": True, "target_duration": 2, "part_target": 0.5, "window": 10}


async def _cdn(procs: Processes, session: aiohttp.ClientSession, mode: str, edges: int,
               counted: bool) -> tuple[str, list[Node]]:
    """The built-in LL origin (behind a counting pass-through when `counted`), a shield and `edges` edges."""
    port = free_port()
    nodes = [Node.new("shields", "shield-1")] + [Node.new("edges", f"edge-{i}") for i in range(1, edges + 1)]
    config = procs.workdir / f"{mode}.toml"
    builtin = {"listen": f"127.0.0.1:{port}", "mode": mode, **LL_ORIGIN}
    write_topology(config, url(port), nodes, CACHE, builtin=builtin)
    await start_builtin_origin(procs, session, config, port)
    upstream = url(port)
    if counted:
        upstream = url(await start_counting(procs, session, "counter", "benchorigin", ["--upstream", url(port)]))
    cdn = procs.workdir / f"{mode}-cdn.toml"
    write_topology(cdn, upstream, nodes, CACHE, guard={"prefetch": False})
    await start_nodes(procs, session, cdn, nodes)
    return url(port), nodes


def _play(master: str, seconds: int) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run `make test` (it installs the players)")
    proc = subprocess.run([node, str(PLAYERS / "play.mjs"), master, str(seconds)], cwd=PLAYERS,
                          capture_output=True, text=True, timeout=seconds + 120,
                          env={**os.environ, "LIVECDN_LOW_LATENCY": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"play.mjs printed nothing (exit {proc.returncode}): {proc.stderr[-500:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    return {"latency": r.get("latency"), "stalls": len(r.get("stalls", [])), "started": r.get("started"),
            "errors": [e.get("details") for e in r.get("errors", [])], "played": r.get("playedSeconds")}


async def latency(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    origin, nodes = await _cdn(procs, session, "ffmpeg", 1, counted=False)
    edge = next(n for n in nodes if n.kind == "edges")
    seconds = 15 if quick else 30
    # Both players join a running stream: before ffmpeg's first whole segment the playlist holds parts only,
    # and an hls.js started then played 6 s behind (3 segments, as without low latency) in one run of four.
    deadline = time.monotonic() + 30
    while True:
        async with session.get(origin + "/live/720p/index.m3u8") as r:
            if r.status == 200 and "#EXTINF" in await r.text():
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the origin listed no whole segment within 30 s")
        await asyncio.sleep(0.2)
    # Side by side, joining at the same moment: hls.js keeps the latency it starts with (it does not speed up to
    # catch up by default), and one after the other the start alone moved the difference by ±0.3 s.
    loop = asyncio.get_running_loop()
    try:
        direct, cdn = await asyncio.gather(
            loop.run_in_executor(None, _play, origin + "/live/master.m3u8", seconds),
            loop.run_in_executor(None, _play, url(edge.port) + "/live/master.m3u8", seconds))
    finally:
        procs.stop(["origin", *(n.name for n in nodes)])  # ffmpeg encoding would load the next figure
    out: dict[str, Any] = {"seconds": seconds, "direct": direct, "cdn": cdn}
    if direct["latency"] and cdn["latency"]:
        out["added"] = round(cdn["latency"]["mean"] - direct["latency"]["mean"], 3)
    return out


def show_latency(r: dict[str, Any]) -> None:
    def mean(side: dict[str, Any]) -> str:
        return f"{side['latency']['mean']:.2f} s" if side.get("latency") else "n/a"
    print(f"hls.js lowLatencyMode, {r['seconds']} s each: direct {mean(r['direct'])} "
          f"(stalls {r['direct']['stalls']}), through shield+edge {mean(r['cdn'])} (stalls {r['cdn']['stalls']}); "
          f"CDN adds {r.get('added', 'n/a')} s")


async def viewers(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    origin, nodes = await _cdn(procs, session, "synthetic", 2, counted=True)
    edges = ",".join(f"127.0.0.1:{n.port}" for n in nodes if n.kind == "edges")
    count, duration = (int(os.environ.get("LLHLS_VIEWERS", 200)), 10.0) if quick else (1000, 20.0)
    workers = max(1, min(SIM_PROCESSES, count // 100))
    ready: dict[str, float] = {}  # "msn.part" → when the origin had it (CLOCK_MONOTONIC)
    stop = asyncio.Event()
    probe = asyncio.ensure_future(part_ready_probe(session, origin + "/live/360p/index.m3u8", ready, stop))
    before = await origin_counts(session, procs_port(procs))
    started = time.monotonic()
    # The viewers in processes of their own (`llviewers.py`), so the simulator is not the bottleneck.
    shares = [count // workers + (w < count % workers) for w in range(workers)]
    sims = [await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "llviewers.py"), edges, "/live/360p/index.m3u8", "--viewers", str(share),
        "--seconds", str(duration), "--source", "127.102", "--first", str(sum(shares[:w])),
        stdout=asyncio.subprocess.PIPE, cwd=HERE) for w, share in enumerate(shares)]
    outs = [json.loads((await sim.communicate())[0]) for sim in sims]
    stop.set()
    after = await origin_counts(session, procs_port(procs))
    await probe
    # From when the part existed, or the reload was sent if later (a viewer that asked late waited only for its answer).
    # Whole at the viewer (the parser's stamp), and the viewer's task resumed (that plus the simulator's own queue).
    by_part: dict[str, list[float]] = {}
    for out in outs:
        for name, sent, at, _ in out["answered"]:
            if name in ready:
                by_part.setdefault(name, []).append(at - max(ready[name], sent))
    delays = [d for part in by_part.values() for d in part]
    resumed = [at - max(ready[name], sent) for out in outs for name, sent, _, at in out["answered"] if name in ready]
    parts = {p: after.get(p, 0) - before.get(p, 0) for p in after if p.count(".") == 2 and p.endswith(".ts")}
    parts = {p: n for p, n in parts.items() if n}
    playlist = after.get("/live/360p/index.m3u8", 0) - before.get("/live/360p/index.m3u8", 0)
    return {
        "viewers": count, "edges": 2, "simulator_processes": workers,
        "seconds": round(time.monotonic() - started, 1), "failures": sum(out["failures"] for out in outs),
        "errors": sorted({e for out in outs for e in out["errors"]}), "parts_fetched": len(parts),
        "origin_requests_per_part": round(statistics.fmean(parts.values()), 3) if parts else None,
        "origin_playlist_requests_per_part": round(playlist / len(parts), 3) if parts else None,
        "answers": len(delays), "parts_probed": len(ready),
        "ready_to_viewer_ms": _spread(delays), "ready_to_viewer_task_ms": _spread(resumed),
        # Is the tail every part's (the burst's own cost) or a few parts' (a collision, a pause)?
        "slowest_answer_per_part_ms": _spread([max(part) for part in by_part.values()]),
        "worst_parts_p99_ms": sorted((round(percentile(part, 99) * 1000, 1) for part in by_part.values()),
                                     reverse=True)[:5],
    }


def _spread(delays: list[float]) -> dict[str, float] | None:
    """p50, p99 and max of delays in seconds, as milliseconds."""
    if not delays:
        return None
    return {"p50": round(percentile(delays, 50) * 1000, 1), "p99": round(percentile(delays, 99) * 1000, 1),
            "max": round(max(delays) * 1000, 1)}


def procs_port(procs: Processes) -> int:
    """The counting pass-through's port (its command line says it)."""
    cmd = procs.running["counter"].args
    assert isinstance(cmd, list)
    return int(cmd[cmd.index("--port") + 1])


def show_viewers(r: dict[str, Any]) -> None:
    print(f"{r['viewers']} LL viewers on {r['edges']} edges for {r['seconds']} s: {r['parts_fetched']} parts, "
          f"origin requests per part {r['origin_requests_per_part']} "
          f"(playlists {r['origin_playlist_requests_per_part']}), "
          f"part ready to viewer {r['ready_to_viewer_ms']} (to the viewer's task {r['ready_to_viewer_task_ms']}) "
          f"over {r['answers']} answers ({r['parts_probed']} parts probed), failures {r['failures']}; "
          f"each part's slowest answer {r['slowest_answer_per_part_ms']}, "
          f"the worst parts' p99 {r['worst_parts_p99_ms']}")


if __name__ == "__main__":
    sys.exit(main("llhls", [Figure("latency", latency, show_latency, details=()),
                            Figure("viewers", viewers, show_viewers, details=())], __doc__ or ""))
