"""The data-path figures: coalescing under a slow origin, live viewers, edge memory.

    .venv/bin/python benchmarks/datapath.py [--quick] [--coalescing] [--also-tree PATH]

Every node runs as an operator runs it (`livecdn ROLE --config FILE --node
NAME`) on loopback, from topology files written to a temp dir. Three figures:

1. coalescing: 200 concurrent GETs of one never-seen 1 MiB segment at an edge
   (edge → shield → a counting origin that answers after 0.3 s, then 6 s);
   origin requests, body integrity, client times, server CPU. Same for nginx
   (`proxy_cache_lock`) in front of the same origin when nginx is installed.
2. viewers: 2 edges × 200 simulated players (viewers.py, one process per edge)
   following the built-in synthetic live stream through a counting
   pass-through; origin requests per segment and per playlist reload, stalls,
   segment latency, the load generator's own event-loop lag.
3. memory: one edge with a 128 MiB memory tier, written with twice that in
   distinct 1 MiB objects; its RSS against budget + 100 MiB.

With `--also-tree PATH`, the nodes of a second source tree ("livecdn@<dir>")
are measured too: a system of their own in figure 1 (interleaved), figures 2
and 3 run again with them ("viewers@<dir>", "memory@<dir>").

Prints a table per figure and one final JSON line, also written to
benchmarks/results/datapath-<date>.json. Every process started is stopped
(process groups, SIGTERM then SIGKILL) on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import psutil

from lib.nginx import nginx_binary, start_nginx
from lib.ports import free_port, url
from lib.procs import BENCH, PY, Processes, workspace
from lib.prom import scrape
from lib.rawhttp import Connection, ConnectionClosed, Response
from lib.report import header, save, without
from lib.topology import (
    Node,
    origin_counts,
    start_bench_origin,
    start_builtin_origin,
    start_nodes,
    wait_live,
    write_topology,
)
from lib.trees import add_also_tree, label
from tools.benchorigin import object_body
from viewers import client_address, percentile

MIB = 1 << 20
OBJECT_BYTES = MIB
CLIENTS = 200
DELAYS = (0.3, 6.0)
VIEWERS_PER_EDGE = 200
TARGET_DURATION = 2
WINDOW = 6
MEMORY_BUDGET = 128 * MIB
MEMORY_SLACK = 100 * MIB
MEMORY_CONCURRENCY = 4
# Clients connect from their own loopback addresses, as distinct players would,
# so an edge's per-client limits see many clients, not one.
BURST_SOURCE = "127.100"
VIEWER_SOURCES = ("127.101", "127.102")
MEMORY_SOURCE = "127.103"
NO_PREFETCH = {"prefetch": False}  # figures 1 and 3 time and count exactly the requests they make
VIEWERS_GRACE = 60.0  # seconds a viewers.py process may take beyond its duration to start and report


@dataclass(frozen=True)
class Plan:
    """How much of each figure to run."""

    runs: int  # coalescing bursts per (system, delay)
    viewer_seconds: float


FULL = Plan(runs=5, viewer_seconds=60.0)
QUICK = Plan(runs=3, viewer_seconds=20.0)


# --- figure 1: coalescing -----------------------------------------------------

@dataclass(frozen=True)
class Burst:
    """One burst of identical GETs of a new object, then one more of the same, now cached."""

    origin_requests: int
    identical: bool  # every body complete and byte-identical to the origin's
    complete: int  # clients that got a 200 with the whole, right body
    slowest_s: float
    median_s: float
    hit_slowest_s: float  # the same burst once the object is cached: the client + transfer floor
    delay_s: float  # the origin's delay
    cpu_s: float  # CPU the system's processes (edge and shield, or nginx) spent on the cold burst
    hit_cpu_s: float  # ... and on the cached one

    @property
    def excess_s(self) -> float:
        """What the slowest client lost to coalescing: past the origin's delay and the cached burst's slowest."""
        return self.slowest_s - self.delay_s - self.hit_slowest_s

    @property
    def excess_cpu_s(self) -> float:
        """The CPU the cold burst cost beyond the cached one: on a shared, busy machine a steadier figure of
        the same excess than wall time (the edge is one process: on an idle core, CPU is its time)."""
        return self.cpu_s - self.hit_cpu_s


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes and their children (a node's workers, nginx's)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


async def one_get(port: int, path: str, timeout: float, source: str) -> tuple[float, Response]:
    """Seconds to the last body byte (or to the failure) of one GET on a new connection from `source`."""
    started = time.monotonic()
    try:
        conn = await asyncio.wait_for(Connection.open("127.0.0.1", port, source, keep_body=True), timeout)
        try:
            answer = await asyncio.wait_for(conn.get(path, close=True), timeout)
        finally:
            conn.close()
    except (TimeoutError, OSError, ConnectionClosed, httptools.HttpParserError):
        answer = Response()  # nothing complete: not intact
    return time.monotonic() - started, answer


async def gets(port: int, path: str, timeout: float) -> tuple[list[float], list[Response]]:
    """`CLIENTS` concurrent GETs of one path, one connection (and address) each: times and answers."""
    results = await asyncio.gather(*(one_get(port, path, timeout, client_address(BURST_SOURCE, i))
                                     for i in range(CLIENTS)))
    return [t for t, _ in results], [a for _, a in results]


async def burst(session: aiohttp.ClientSession, port: int, directory: str, origin_port: int, delay: float,
                pids: list[int]) -> Burst:
    """A burst of GETs of a new object at `port`, checked against the origin's body and count.

    Its playlist is fetched first, as a player would: an edge serves only announced names.
    `pids` are the system's processes, whose CPU each burst is charged.
    """
    async with session.get(f"{url(port)}{directory}/n1.m3u8") as r:
        if r.status != 200:
            raise RuntimeError(f"playlist {directory}/n1.m3u8 at port {port}: status {r.status}")
    path = f"{directory}/seg0.ts"
    cpu = cpu_seconds(pids)
    times, answers = await gets(port, path, delay + 60)
    cpu = cpu_seconds(pids) - cpu
    digest = hashlib.sha256(object_body(path, OBJECT_BYTES)).digest()
    complete = sum(a.intact(digest) for a in answers)
    del answers  # 200 MiB: not held while the cached burst runs
    hit_cpu = cpu_seconds(pids)
    hit_times, _ = await gets(port, path, 60)
    hit_cpu = cpu_seconds(pids) - hit_cpu
    counts = await origin_counts(session, origin_port)
    return Burst(counts.get(path, 0), complete == CLIENTS, complete, max(times), statistics.median(times),
                 max(hit_times), delay, cpu, hit_cpu)


def summarize_bursts(bursts: list[Burst]) -> dict[str, Any]:
    """Medians over runs (and the worst run's origin requests and slowest client)."""
    return {
        "runs": len(bursts),
        "origin_requests": statistics.median(b.origin_requests for b in bursts),
        "origin_requests_max": max(b.origin_requests for b in bursts),
        "identical_all_runs": all(b.identical for b in bursts),
        "complete_min": min(b.complete for b in bursts),
        "slowest_s": round(statistics.median(b.slowest_s for b in bursts), 3),
        "slowest_s_worst": round(max(b.slowest_s for b in bursts), 3),
        "median_s": round(statistics.median(b.median_s for b in bursts), 3),
        "hit_slowest_s": round(statistics.median(b.hit_slowest_s for b in bursts), 3),
        "excess_ms": round(statistics.median(b.excess_s for b in bursts) * 1000, 1),
        # Means: /proc counts CPU in 10 ms ticks, finer only summed over runs.
        "cpu_ms": round(statistics.mean(b.cpu_s for b in bursts) * 1000, 1),
        "hit_cpu_ms": round(statistics.mean(b.hit_cpu_s for b in bursts) * 1000, 1),
        "excess_cpu_ms": round(statistics.mean(b.excess_cpu_s for b in bursts) * 1000, 1),
        "bursts": [asdict(b) for b in bursts],
    }


async def start_livecdn(procs: Processes, session: aiohttp.ClientSession, origin: int, tree: Path | None,
                        n: int) -> tuple[int, list[str]]:
    """Shield-N and edge-N from `tree` in front of the bench origin, with a topology of their own; edge port, names."""
    nodes = [Node.new("shields", f"shield-{n}"), Node.new("edges", f"edge-{n}")]
    config = procs.workdir / f"coalescing-{n}.toml"
    write_topology(config, url(origin), nodes, {"memory_bytes": "256MiB", "disk_path": ""}, guard=NO_PREFETCH)
    await start_nodes(procs, session, config, nodes, tree)
    return nodes[1].port, [nodes[1].name, nodes[0].name]


async def coalescing(procs: Processes, session: aiohttp.ClientSession, plan: Plan,
                     also: Path | None) -> dict[str, Any]:
    """Figure 1: bursts of `CLIENTS` GETs of new objects from a slow origin: livecdn (each tree) and nginx."""
    stamp = int(time.time())
    started = ["slow-origin"]
    try:
        origin = await start_bench_origin(procs, session, "slow-origin", OBJECT_BYTES)
        port, names = await start_livecdn(procs, session, origin, None, 1)
        started += names
        systems = {"livecdn": port}
        pids = {"livecdn": [procs.running[n].pid for n in names]}
        if also is not None:
            port, names = await start_livecdn(procs, session, origin, also, 2)
            started += names
            systems[label(also)] = port
            pids[label(also)] = [procs.running[n].pid for n in names]
        nginx = (await start_nginx(procs, session, "nginx", "cache.conf.template", origin, "/d0/nginx-ready/probe.ts")
                 if nginx_binary() is not None else None)
        if nginx is not None:
            started.append("nginx")
            systems["nginx"] = nginx
            pids["nginx"] = [procs.running["nginx"].pid]
        for name, port in systems.items():  # first connections, first imports: not measured
            await burst(session, port, f"/d0/{name}-{stamp}-warmup", origin, 0, pids[name])
        results: dict[str, dict[str, Any]] = {name: {} for name in systems}
        for delay in DELAYS:
            bursts: dict[str, list[Burst]] = {name: [] for name in systems}
            for run in range(plan.runs):
                for name, port in systems.items():  # interleaved, so machine noise hits every system alike
                    directory = f"/d{round(delay * 1000)}/{name.replace('@', '-')}-{stamp}-run{run}"
                    bursts[name].append(await burst(session, port, directory, origin, delay, pids[name]))
            for name in systems:
                results[name][f"{delay:g}s"] = summarize_bursts(bursts[name])
    finally:
        procs.stop(reversed(started))
    return {"clients": CLIENTS, "object_bytes": OBJECT_BYTES,
            "nginx": "measured" if nginx is not None else "not installed (apt-get install -y nginx)",
            "systems": results}


def print_coalescing(fig: dict[str, Any]) -> None:
    print(f"\n1. coalescing: {fig['clients']} concurrent GETs of one new {fig['object_bytes'] // MIB} MiB "
          f"segment, median of {fig['systems']['livecdn']['0.3s']['runs']} runs (nginx: {fig['nginx']})")
    width = max(8, *(len(name) for name in fig["systems"]))
    print(f"  {'system':<{width}} {'delay':>5} {'origin req':>10} {'(max)':>5} {'identical':>11} "
          f"{'slowest s':>9} {'(worst)':>7} {'median s':>8} {'cached s':>8} {'excess ms':>9} {'CPU ms':>7} "
          f"{'cached':>6} {'excess':>6}")
    for name, by_delay in fig["systems"].items():
        for delay, s in by_delay.items():
            ident = f"{'yes' if s['identical_all_runs'] else 'NO'} {s['complete_min']}/{fig['clients']}"
            print(f"  {name:<{width}} {delay:>5} {s['origin_requests']:>10g} {s['origin_requests_max']:>5} "
                  f"{ident:>11} {s['slowest_s']:>9.3f} {s['slowest_s_worst']:>7.3f} {s['median_s']:>8.3f} "
                  f"{s['hit_slowest_s']:>8.3f} {s['excess_ms']:>9.1f} {s['cpu_ms']:>7.0f} {s['hit_cpu_ms']:>6.0f} "
                  f"{s['excess_cpu_ms']:>6.0f}")
    print("  goal: 1 origin request, all identical, excess <= 30 ms; cached s = slowest client of the same burst "
          "once cached (client and transfer floor); excess = slowest - delay - cached, median of runs; CPU ms: the "
          "server's CPU for the cold burst, the cached one, and the difference, mean of runs (steadier on a busy "
          "machine)")


# --- figure 2: viewers --------------------------------------------------------

async def run_viewers(procs: Processes, edges: list[Node], seconds: float) -> list[dict[str, Any]]:
    """One viewers.py process per edge, run to completion; their results."""
    names = []
    for i, edge in enumerate(edges):
        name = f"viewers-{edge.name}"
        procs.start(name, [PY, str(BENCH / "viewers.py"), url(edge.port) + "/live/master.m3u8",
                           "--viewers", str(VIEWERS_PER_EDGE), "--duration", str(seconds), "--seed", str(i + 1),
                           "--source", VIEWER_SOURCES[i]])
        names.append(name)
    deadline = time.monotonic() + seconds + VIEWERS_GRACE
    while any(procs.running[n].poll() is None for n in names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"viewer processes still running {seconds + VIEWERS_GRACE:.0f}s after start")
        await asyncio.sleep(0.2)
    for n in names:
        if procs.running[n].returncode != 0:
            raise RuntimeError(f"{n} failed:\n{procs.log_tail(n)}")
    results = [json.loads(procs.output(n)) for n in names]
    procs.stop(names)
    return results


def origin_figures(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, Any]:
    """Origin requests per distinct segment and playlist reloads per target duration, per rendition."""
    delta = {p: after[p] - before.get(p, 0) for p in after if after[p] > before.get(p, 0)}
    segments = {p: n for p, n in delta.items() if p.endswith(".ts")}
    playlists = {p: n for p, n in delta.items() if p.endswith("/index.m3u8")}
    durations = seconds / TARGET_DURATION
    return {
        "requests": sum(delta.values()),
        "segment_requests": sum(segments.values()),
        "distinct_segments": len(segments),
        "per_segment": round(sum(segments.values()) / len(segments), 3) if segments else None,
        "per_segment_max": max(segments.values(), default=0),
        "playlist_per_target_duration": {
            p.split("/")[-2]: round(n / durations, 2) for p, n in sorted(playlists.items())},
        "master_requests": sum(n for p, n in delta.items() if p.endswith("/master.m3u8")),
    }


async def cache_results(session: aiohttp.ClientSession, admins: list[int]) -> dict[str, float]:
    """`livecdn_requests_total` of these nodes, summed by cache result (hit, miss, coalesced, ...)."""
    out: dict[str, float] = {}
    for admin in admins:
        for result, n in (await scrape(session, admin)).by_label("livecdn_requests_total", "cache").items():
            out[result] = out.get(result, 0.0) + n
    return out


async def viewers(procs: Processes, session: aiohttp.ClientSession, plan: Plan, tree: Path | None) -> dict[str, Any]:
    """Figure 2: 2 edges (from `tree`) × `VIEWERS_PER_EDGE` players on the built-in synthetic live origin."""
    origin_port = free_port()
    shield = Node.new("shields", "shield-1")
    edges = [Node.new("edges", "edge-1"), Node.new("edges", "edge-2")]
    config = procs.workdir / "viewers.toml"
    builtin = {"listen": f"127.0.0.1:{origin_port}", "mode": "synthetic", "streams": ["live"],
               "target_duration": TARGET_DURATION, "window": WINDOW}
    try:
        proxy = await start_bench_origin(procs, session, "counting-proxy", upstream=url(origin_port))
        write_topology(config, url(proxy), [shield, *edges], {"memory_bytes": "256MiB", "disk_path": ""},
                       builtin=builtin)
        await start_builtin_origin(procs, session, config, origin_port)
        await start_nodes(procs, session, config, [shield, *edges], tree)
        await wait_live(session, url(origin_port))
        before = await origin_counts(session, proxy)
        upstream_before = (await scrape(session, shield.admin)).total("livecdn_upstream_requests_total")
        edge_before = await cache_results(session, [e.admin for e in edges])
        results = await run_viewers(procs, edges, plan.viewer_seconds)
        after = await origin_counts(session, proxy)
        upstream = (await scrape(session, shield.admin)).total("livecdn_upstream_requests_total") - upstream_before
        edge_after = await cache_results(session, [e.admin for e in edges])
    finally:
        procs.stop(["edge-2", "edge-1", "shield-1", "origin", "counting-proxy"])
    latencies = [ms for r in results for ms in r["segment_ms"]]
    origin = origin_figures(before, after, plan.viewer_seconds)
    origin["shield_upstream_requests"] = int(upstream)
    return {
        "seconds": plan.viewer_seconds, "edges": len(edges), "viewers": sum(r["viewers"] for r in results),
        "playing": sum(r["playing"] for r in results),
        "origin": origin,
        "stalls": sum(r["stalls"] for r in results),
        "stall_seconds": round(sum(r["stall_seconds"] for r in results), 3),
        "stalled_viewers": sum(r["stalled_viewers"] for r in results),
        "segments_fetched": len(latencies),
        "segment_ms": {"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1),
                       "max": round(max(latencies, default=0.0), 1)},
        "edge_answers": {c: int(n - edge_before.get(c, 0)) for c, n in edge_after.items()},
        "errors": sum(r["errors"] for r in results),
        "error_samples": [s for r in results for s in r["error_samples"]][:5],
        "client_loop_lag_ms": [r["loop_lag_ms"] for r in results],
    }


def print_viewers(fig: dict[str, Any], system: str) -> None:
    o = fig["origin"]
    print(f"\n2. viewers ({system}): {fig['edges']} edges x {VIEWERS_PER_EDGE} viewers, {fig['seconds']:g}s, "
          f"synthetic live (target {TARGET_DURATION}s, window {WINDOW})")
    rows = [
        ("origin requests per segment", f"{o['per_segment']} (max {o['per_segment_max']}, "
                                        f"{o['segment_requests']} requests / {o['distinct_segments']} segments)",
         "1.00"),
        ("origin playlist requests per target duration",
         ", ".join(f"{r} {n}" for r, n in o["playlist_per_target_duration"].items()), ""),
        ("origin requests total (shield counter)", f"{o['requests']} ({o['shield_upstream_requests']})", ""),
        ("viewers playing", f"{fig['playing']}/{fig['viewers']}", ""),
        ("stalls (viewers, seconds)", f"{fig['stalls']} ({fig['stalled_viewers']}, {fig['stall_seconds']}s)", "0"),
        ("segment latency p50/p99/max ms",
         f"{fig['segment_ms']['p50']} / {fig['segment_ms']['p99']} / {fig['segment_ms']['max']}", ""),
        ("edge answers", ", ".join(f"{c} {n}" for c, n in fig["edge_answers"].items()), ""),
        ("viewer request errors", str(fig["errors"]), "0"),
        ("client event-loop lag p99/max ms",
         ", ".join(f"{lag['p99']}/{lag['max']}" for lag in fig["client_loop_lag_ms"]), ""),
    ]
    for row, value, goal in rows:
        print(f"  {row:<46} {value}" + (f"   goal {goal}" if goal else ""))


# --- figure 3: memory ---------------------------------------------------------

def rss_and_peak(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) of a process in bytes."""
    rss = psutil.Process(pid).memory_info().rss
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return rss, int(m.group(1)) * 1024 if m else rss


async def fill_edge(base: str, directory: str, count: int) -> int:
    """GET `count` distinct objects through the edge, `MEMORY_CONCURRENCY` at a time; bytes received.

    The playlist announcing them is fetched first (an edge serves only announced
    names); each worker is a client of its own, from its own address.
    """
    received = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal received
        while not queue.empty():
            i = queue.get_nowait()
            async with session.get(f"{base}{directory}/seg{i}.ts") as r:
                body = await r.read()
                if r.status != 200 or len(body) != OBJECT_BYTES:
                    raise RuntimeError(f"object {i}: status {r.status}, {len(body)} bytes: {body[:100]!r}")
                received += len(body)

    timeout = aiohttp.ClientTimeout(total=60)
    sessions = [aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
        local_addr=(client_address(MEMORY_SOURCE, w), 0))) for w in range(MEMORY_CONCURRENCY)]
    try:
        async with sessions[0].get(f"{base}{directory}/n{count}.m3u8") as r:
            if r.status != 200:
                raise RuntimeError(f"playlist {directory}/n{count}.m3u8: status {r.status}")
        await asyncio.gather(*(worker(s) for s in sessions))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return received


async def memory(procs: Processes, session: aiohttp.ClientSession, tree: Path | None) -> dict[str, Any]:
    """Figure 3: an edge's (from `tree`) RSS after twice its memory budget went through it."""
    edge = Node.new("edges", "edge-1")
    config = procs.workdir / "memory.toml"
    try:
        origin = await start_bench_origin(procs, session, "object-origin", OBJECT_BYTES)
        write_topology(config, url(origin), [edge], {"memory_bytes": MEMORY_BUDGET, "disk_path": ""},
                       guard=NO_PREFETCH)
        await start_nodes(procs, session, config, [edge], tree)
        pid = procs.running[edge.name].pid
        rss_start, _ = rss_and_peak(pid)
        written = await fill_edge(url(edge.port), f"/d0/mem-{int(time.time())}", 2 * MEMORY_BUDGET // OBJECT_BYTES)
        await asyncio.sleep(1.0)
        rss_after, peak = rss_and_peak(pid)
        async with session.get(url(edge.admin) + "/healthz") as r:
            tier = (await r.json())["memory_bytes"]
    finally:
        procs.stop([edge.name, "object-origin"])
    limit = MEMORY_BUDGET + MEMORY_SLACK
    return {"budget_bytes": MEMORY_BUDGET, "written_bytes": written, "memory_tier_bytes": tier,
            "rss_start_bytes": rss_start, "rss_after_bytes": rss_after, "rss_peak_bytes": peak,
            "limit_bytes": limit, "under_limit": rss_after <= limit}


def print_memory(fig: dict[str, Any], system: str) -> None:
    def mib(n: int) -> str:
        return f"{n / MIB:.1f} MiB"

    print(f"\n3. memory ({system}): one edge, memory tier {mib(fig['budget_bytes'])}, disk off, "
          f"{mib(fig['written_bytes'])} of distinct 1 MiB objects written through it")
    print(f"  RSS after start     {mib(fig['rss_start_bytes'])}")
    print(f"  RSS after writing   {mib(fig['rss_after_bytes'])}   (peak {mib(fig['rss_peak_bytes'])}, "
          f"memory tier holds {mib(fig['memory_tier_bytes'])})")
    verdict = "under" if fig["under_limit"] else "OVER"
    print(f"  goal: RSS under budget + 100 MiB = {mib(fig['limit_bytes'])}: {verdict}")


# --- main ---------------------------------------------------------------------

async def run_all(procs: Processes, plan: Plan, quick: bool, also: Path | None,
                  only_coalescing: bool = False) -> dict[str, Any]:
    trees: list[tuple[str, Path | None]] = [("", None)] + ([("@" + also.name, also)] if also else [])
    async with aiohttp.ClientSession() as session:
        report = header(quick)
        report["coalescing"] = await coalescing(procs, session, plan, also)
        print_coalescing(report["coalescing"])
        if only_coalescing:
            return report
        for tag, tree in trees:
            report[f"viewers{tag}"] = await viewers(procs, session, plan, tree)
            print_viewers(report[f"viewers{tag}"], label(tree) if tree else "livecdn")
        for tag, tree in trees:
            report[f"memory{tag}"] = await memory(procs, session, tree)
            print_memory(report[f"memory{tag}"], label(tree) if tree else "livecdn")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description="livecdn data-path figures: coalescing, viewers, memory.")
    p.add_argument("--quick", action="store_true", help="fewer runs and a 20 s viewer test (under ~2 min)")
    p.add_argument("--runs", type=int, help="coalescing bursts per system and delay (instead of the plan's)")
    p.add_argument("--viewer-seconds", type=float, help="length of the viewer test (instead of the plan's)")
    p.add_argument("--coalescing", action="store_true", help="figure 1 only")
    add_also_tree(p)
    args = p.parse_args()
    plan = QUICK if args.quick else FULL
    plan = replace(plan, runs=args.runs or plan.runs, viewer_seconds=args.viewer_seconds or plan.viewer_seconds)
    try:
        with workspace("datapath") as procs:
            report = asyncio.run(run_all(procs, plan, args.quick, args.also_tree, args.coalescing))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    save("datapath", report, '-quick' if args.quick else '')
    print(json.dumps(without(report, [("coalescing", "systems", "*", "*", "bursts")])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
