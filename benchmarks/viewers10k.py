"""Issue 16: thousands of keep-alive viewers on one edge process, then the same on nginx.

    .venv/bin/python benchmarks/viewers10k.py                         # 2,000 then 10,000 viewers, 60 s each
    .venv/bin/python benchmarks/viewers10k.py --viewers 2000 --steady 20   # a shorter run

The speed benchmark's origin (`speed/origin.py`, a live stream that is a
function of the clock, segments of `--segment-kib`) behind livecdn's edge
(one worker, as shipped) and behind nginx `proxy_cache` (one worker, the
speed config), each pinned to core 0. This process is the client, on core 1:
one asyncio loop holding every viewer's keep-alive connection
(`lib/rawhttp.Connection`), opened from many loopback source addresses
(127.0.x.y), fewer per address than the edge's `connections_per_client`. Each
viewer, at its own phase within a 2 s period (the target duration), fetches
the media playlist and then the newest segment but LAG, every period: a
playlist every 2 s and a segment per 2 s.

Once every viewer is connected and a settling period has passed, STEADY
seconds are measured: the latency of every answer (from the request's write
to its last byte; p50, p99, max), the server's CPU (its process group, from
/proc) as cores per 1,000 viewers, its resident memory (all its processes)
over its memory before the viewers connected, per connection, and the
client's own CPU and lateness (periods begun late: a client that cannot keep
up shows here, not as server latency alone). Then the viewers disconnect and
the next server or count runs. Writes a dated section at the top of
benchmarks/RESULTS.md and the raw figures to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
import psutil

from lib.edges import Servers
from lib.procs import BENCH, ROOT, workspace
from lib.rawhttp import Connection, ConnectionClosed
from lib.report import add_section, result_path, save
from livecdn.config.schema import LimitSettings

PERIOD = 2.0  # the stream's target duration: one playlist and one segment per viewer per period
LAG = 2  # segments behind the newest, as players start behind live (speed/viewers.lua does the same)
PLAYLIST = "/live/720p/index.m3u8"
PER_ADDRESS = 100  # viewers per source address (the edge's cap, connections_per_client, is far above)
OPEN_BATCH, OPEN_PAUSE = 200, 0.05  # connections opened at once, and the pause between batches
SETTLE = 2 * PERIOD  # after the last connection, before measuring
TIMEOUT = 10.0  # an answer slower than this counts as an error (and the viewer reconnects)
SERVER_CPU, CLIENT_CPU = "0", 1
SEED = 16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Tally:
    """What the viewers saw; latencies only while `measuring`."""

    measuring: bool = False
    playlist: list[float] = field(default_factory=list)
    segment: list[float] = field(default_factory=list)
    errors: int = 0
    reconnects: int = 0
    periods: int = 0
    late: int = 0  # periods begun more than half a period after their time
    body_bytes: int = 0
    connected: int = 0


def segment_path() -> str:
    return f"/live/720p/seg{int(time.time() // PERIOD) - LAG}.ts"


async def timed_get(conn: Connection, path: str, tally: Tally, kind: list[float]) -> None:
    started = time.perf_counter()
    r = await conn.get(path)
    if r.status != 200:
        raise ConnectionError(f"{path}: {r.status}")
    if tally.measuring:
        kind.append(time.perf_counter() - started)
        tally.body_bytes += r.received


async def viewer(host: str, port: int, source: str, phase: float, tally: Tally) -> None:
    """One player: a keep-alive connection, a playlist then a segment every period, until cancelled.

    No task per request (no wait_for): a period's answers get a timer that closes the connection
    after TIMEOUT, which fails the request in flight; the client spends its core on the viewers.
    """
    loop = asyncio.get_running_loop()
    conn: Connection | None = None
    next_at = time.monotonic() + phase
    try:
        while True:
            try:
                if conn is not None and conn.closed:  # the server closed it between two periods
                    tally.reconnects += 1
                    tally.connected -= 1
                    conn = None
                if conn is None:
                    conn = await Connection.open(host, port, source)
                    tally.connected += 1
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif tally.measuring and -delay > PERIOD / 2:
                    tally.late += 1
                next_at = max(next_at + PERIOD, time.monotonic())
                if tally.measuring:
                    tally.periods += 1
                watchdog = loop.call_later(TIMEOUT, conn.close)
                try:
                    await timed_get(conn, PLAYLIST, tally, tally.playlist)
                    await timed_get(conn, segment_path(), tally, tally.segment)
                finally:
                    watchdog.cancel()
            except (OSError, ConnectionClosed, httptools.HttpParserError):
                if tally.measuring:
                    tally.errors += 1
                if conn is not None:
                    conn.close()
                    tally.connected -= 1
                    tally.reconnects += 1
                conn = None
                await asyncio.sleep(PERIOD / 4)
    finally:
        if conn is not None:
            conn.close()


def group_memory(pgid: int) -> tuple[int, int]:
    """Resident bytes and CPU seconds of every process in a process group (a server and its workers)."""
    rss, cpu = 0, 0.0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            rss += proc.memory_info().rss
            times = proc.cpu_times()
            cpu += times.user + times.system
        except (psutil.Error, ProcessLookupError):
            continue  # gone meanwhile
    return rss, cpu


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) in ms; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e3


async def hold(servers: Servers, name: str, viewers: int, steady: float) -> dict[str, Any]:
    """`viewers` viewers on server `name` (already started): ramp, settle, measure `steady` s, disconnect."""
    port, pgid = servers.ports[name], servers.running[name].pid
    rss_before, _ = group_memory(pgid)
    sources = [f"127.0.{100 + i // 250}.{1 + i % 250}" for i in range(math.ceil(viewers / PER_ADDRESS))]
    tally = Tally()
    rng = random.Random(SEED)
    tasks: list[asyncio.Task[None]] = []
    ramp_started = time.monotonic()
    for i in range(viewers):
        tasks.append(asyncio.create_task(viewer("127.0.0.1", port, sources[i % len(sources)],
                                                rng.uniform(0, PERIOD), tally)))
        if (i + 1) % OPEN_BATCH == 0:
            await asyncio.sleep(OPEN_PAUSE)
    while tally.connected < viewers and time.monotonic() - ramp_started < 60:
        await asyncio.sleep(0.2)
    ramp = time.monotonic() - ramp_started
    log(f"  {name}: {tally.connected} of {viewers} viewers connected in {ramp:.1f} s "
        f"from {len(sources)} addresses")
    await asyncio.sleep(SETTLE)
    me = psutil.Process()
    _, cpu_before = group_memory(pgid)
    client_before = sum(me.cpu_times()[:2])
    started = time.monotonic()
    tally.measuring = True
    rss_samples = []
    while (elapsed := time.monotonic() - started) < steady:
        await asyncio.sleep(min(PERIOD * 2, steady - elapsed))
        rss_samples.append(group_memory(pgid)[0])
    tally.measuring = False
    wall = time.monotonic() - started
    _, cpu_after = group_memory(pgid)
    client_cpu = sum(me.cpu_times()[:2]) - client_before
    connected = tally.connected
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rss = statistics.median(rss_samples)
    server_cores = (cpu_after - cpu_before) / wall
    result = {
        "server": name, "viewers": viewers, "addresses": len(sources), "ramp_s": round(ramp, 2),
        "connected": connected, "steady_s": round(wall, 1),
        "playlist_ms": {"n": len(tally.playlist), "p50": quantile(tally.playlist, 0.5),
                        "p99": quantile(tally.playlist, 0.99), "max": quantile(tally.playlist, 1.0)},
        "segment_ms": {"n": len(tally.segment), "p50": quantile(tally.segment, 0.5),
                       "p99": quantile(tally.segment, 0.99), "max": quantile(tally.segment, 1.0)},
        "all_p99_ms": quantile(tally.playlist + tally.segment, 0.99),
        "errors": tally.errors, "reconnects": tally.reconnects,
        "periods": tally.periods, "late_periods": tally.late,
        "requests_per_s": (len(tally.playlist) + len(tally.segment)) / wall,
        "bytes_per_s": tally.body_bytes / wall,
        "rss_before": rss_before, "rss_steady": rss, "rss_per_connection": (rss - rss_before) / viewers,
        "server_cores": server_cores, "cores_per_1000": server_cores / viewers * 1000,
        "client_cores": client_cpu / wall,
    }
    log(f"  {name}: {viewers} viewers, p99 playlist {result['playlist_ms']['p99']:.1f} ms, segment "
        f"{result['segment_ms']['p99']:.1f} ms; {result['rss_per_connection'] / 1024:.1f} KiB per connection; "
        f"{result['cores_per_1000']:.3f} cores per 1,000 viewers; client {result['client_cores']:.2f} cores, "
        f"{tally.late} late periods of {tally.periods}; {tally.errors} errors")
    return result


async def run(servers: Servers, names: list[str], counts: list[int], steady: float) -> list[dict[str, Any]]:
    results = []
    for viewers in counts:
        for name in names:
            servers.start(name, 1, SERVER_CPU)
            try:
                for _ in range(2):  # the playlist and the newest segment in cache before anyone counts
                    conn = await Connection.open("127.0.0.1", servers.ports[name], "127.0.0.1")
                    await conn.get(PLAYLIST)
                    await conn.get(segment_path())
                    conn.close()
                results.append(await hold(servers, name, viewers, steady))
            finally:
                servers.stop(name)
    return results


def report(data: dict[str, Any]) -> None:
    lines = [
        f"Measured by `benchmarks/viewers10k.py --viewers {','.join(map(str, data['counts']))} "
        f"--steady {data['steady']:g} --segment-kib {data['segment_kib']}`: each server one worker pinned to "
        "core 0, the asyncio client on core 1, the origin (`speed/origin.py`) on core 1 too. Every viewer "
        f"holds one keep-alive connection and fetches the media playlist, then the newest segment but {LAG} "
        f"({data['segment_kib']} KiB), once every {PERIOD:g} s at its own phase; connections come from "
        f"{PER_ADDRESS} per loopback address (127.0.100.x, …; the edge's `connections_per_client` is "
        f"{data['per_client_cap']}). Latency: from the request's write to the answer's last byte, over "
        f"{data['steady']:g} s of steady state. RSS: the server's processes together in steady state, less "
        "before the viewers connected, per connection. CPU: the server's process group over the steady "
        "state. Client: its own CPU, and periods it began more than 1 s late (when it cannot keep up, "
        "latencies include its own queueing).",
        "",
        "| server | viewers | connected | req/s | p99 playlist | p99 segment | p99 all | max | "
        "RSS per connection | cores per 1,000 viewers | errors | client cores | late periods |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['server']} | {r['viewers']:,} | {r['connected']:,} | {r['requests_per_s']:,.0f} | "
            f"{r['playlist_ms']['p99']:.1f} ms | {r['segment_ms']['p99']:.1f} ms | {r['all_p99_ms']:.1f} ms | "
            f"{max(r['playlist_ms']['max'], r['segment_ms']['max']):.0f} ms | "
            f"{r['rss_per_connection'] / 1024:.1f} KiB | {r['cores_per_1000']:.3f} | {r['errors']} | "
            f"{r['client_cores']:.2f} | {r['late_periods']} of {r['periods']} |")
    by = {(r["server"], r["viewers"]): r for r in data["results"]}
    ratios = []
    for viewers in data["counts"]:
        a, b = by.get(("livecdn", viewers)), by.get(("nginx", viewers))
        if a and b and b["all_p99_ms"] and b["cores_per_1000"] and b["rss_per_connection"]:
            ratios.append(f"{viewers:,} viewers: p99 {a['all_p99_ms'] / b['all_p99_ms']:.2f}, CPU "
                          f"{a['cores_per_1000'] / b['cores_per_1000']:.2f}, RSS per connection "
                          f"{a['rss_per_connection'] / b['rss_per_connection']:.2f}")
    if ratios:
        lines += ["", "livecdn ÷ nginx (lower is better for all three): " + "; ".join(ratios) + "."]
    lines += ["", f"Raw figures: `{data['json']}`."]
    add_section(BENCH / "RESULTS.md", f"Viewers: thousands of keep-alive viewers on one edge process, {data['date']}",
                "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viewers", default="2000,10000", help="viewer counts, comma-separated (default 2000,10000)")
    p.add_argument("--steady", type=float, default=60.0, help="seconds measured at each count (default 60)")
    p.add_argument("--segment-kib", type=int, default=128, help="segment size (default 128 KiB: 2 s at 512 kbit/s)")
    p.add_argument("--only", default="livecdn,nginx", help="servers, comma-separated (livecdn, nginx)")
    args = p.parse_args()
    counts = [int(x) for x in args.viewers.split(",")]
    names = args.only.split(",")
    cap = LimitSettings().connections_per_client
    if cap and cap <= PER_ADDRESS:
        raise SystemExit(f"{PER_ADDRESS} viewers per address is not below the edge's cap of {cap}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(counts) + 1024
    with contextlib.suppress(ValueError, OSError):  # as root the hard limit can rise too
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        counts = [c for c in counts if c + 1024 <= hard]
        log(f"open files limited to {hard}: running {counts}")
    os.sched_setaffinity(0, {CLIENT_CPU})  # children are pinned by taskset (servers core 0, origin core 1)
    with workspace("viewers10k") as procs:
        servers = Servers(procs, {"livecdn": ROOT}, names, connections=max(counts) + 1024)
        servers.start_origin(args.segment_kib << 10)
        results = asyncio.run(run(servers, names, counts, args.steady))
    json_path = result_path("viewers10k")
    data = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "counts": counts,
            "steady": args.steady, "segment_kib": args.segment_kib, "per_client_cap": cap,
            "json": str(json_path.relative_to(ROOT)), "results": results}
    save("viewers10k", data, path=json_path)
    report(data)
    for r in results:
        print(f"{r['server']:<8} {r['viewers']:>6,} viewers  p99 {r['all_p99_ms']:7.1f} ms  "
              f"{r['rss_per_connection'] / 1024:6.1f} KiB/conn  {r['cores_per_1000']:.3f} cores/1000  "
              f"errors {r['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
