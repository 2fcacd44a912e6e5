"""Issue #4 figures: the edge's guard, prefetch and per-client limits.

    .venv/bin/python benchmarks/guard.py [--quick]

1. attack: 100 simulated viewers (viewers.py, from 127.101.0.x) play the
   built-in synthetic live stream through one edge while an attacker process
   (from 127.0.0.9, 64 keep-alive connections, one request in flight each)
   sends 100 000 (`--quick`: 20 000) requests for random names: under the real
   stream (`/live/720p/<random>.ts`), elsewhere (`/<random>/<random>.ts`) and
   random playlists (`/<random>/<random>.m3u8`). Windows: before (no attack),
   attack, after (no attack, exactly as long as the attack: the baseline the
   attack's upstream cost is measured against). Once with the default limits,
   once with `[limits] miss_rate = 0` (the guard alone).
2. false positives and filter memory, in-process: `Generations` at its fullest
   and the real `StreamGuard.learn()` path fed a simulated 24 h live stream.
3. prefetch: 5 viewers on a one-rendition stream behind a delaying proxy; the
   first viewer request for each new segment: its X-Cache and latency, with
   and without `[guard] prefetch`.

Prints one table per figure, then one JSON line with every figure, also
written to benchmarks/results/guard-<date>[-quick].json. Every process is
started in its own process group and stopped on exit, error, Ctrl-C or SIGTERM.

Internal modes (run by the benchmark itself as separate processes):
    guard.py attacker --port P --source ADDR --requests N ...
    guard.py proxy --port P --upstream URL --delay-ms MS
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

import viewers
from benchorigin import COUNTS, SESSION, counts, forwarding_handler, ready
from datapath import (
    LIVECDN,
    PY,
    Node,
    Processes,
    free_port,
    origin_counts,
    start_bench_origin,
    start_nodes,
    url,
    wait_live,
    wait_ready,
    write_topology,
)
from report import save
from viewers import percentile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TREE = ROOT  # the source tree the nodes (and figure 2's imports) run from; see --head / --tree

TARGET_DURATION = 2
WINDOW = 6
ATTACK_VIEWERS = 100
VIEWER_SOURCE = "127.101"  # viewers connect from 127.101.0.1, .2, ...
ATTACKER_SOURCE = "127.0.0.9"
PROBE_SOURCE = "127.0.0.20"
ATTACK_CONNECTIONS = 64  # keep-alive connections, one request in flight on each
ATTACK_REQUEST_TIMEOUT = 10.0
PROBE_STREAMS = 6  # extra streams of the origin nobody watches: a legitimate first request during the attack
PREFETCH_VIEWERS = 5
PREFETCH_SOURCE = "127.102"
PREFETCH_SEGMENT_BYTES = 1 << 20  # ~4 Mbit/s of 2 s segments
PREFETCH_DELAY_MS = 300  # the origin's segment answers take this long (delaying proxy)
PREFETCH_SETTLE = 6.0  # seconds after the viewers start: their first segments are history, not news
MAX_VIEWER_SECONDS = 900.0  # simulate()'s own bound; the benchmark cancels it far earlier
VIEWER_PATH = re.compile(r"^/live/(master\.m3u8|[^/]+/(index\.m3u8|seg\d+\.ts))$")
PROBE_PATH = re.compile(r"^/probe\d+/")


@dataclass(frozen=True)
class Plan:
    attack_requests: int
    attack_runs: int  # per limit setting
    warmup: float  # viewers play this long before the first window
    before: float  # the no-attack window before the attack
    attack_timeout: float  # the attacker stops sending after this long, whatever is left
    prefetch_seconds: float  # per run and case
    prefetch_runs: int
    fp_names: int
    hours: float


FULL = Plan(100_000, 3, 8.0, 20.0, 300.0, 56.0, 2, 1_000_000, 24.0)
QUICK = Plan(20_000, 1, 8.0, 10.0, 120.0, 26.0, 1, 1_000_000, 24.0)


# --- recording viewers ------------------------------------------------------------
# viewers.simulate() returns totals only; the figures need per-window latency and
# stalls and each request's X-Cache. A Viewer subclass, installed as
# viewers.Viewer while simulate() runs, records them; its _get is viewers.Viewer._get
# plus one record (copied: the original keeps no headers).

class TimedBuffer(viewers.Buffer):
    """viewers.Buffer that also remembers each stall as (dry since, refilled at)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[float, float]] = []

    def _settle(self, now: float) -> None:
        if self.anchor is not None and now > self.anchor + self.buffered:
            self.events.append((self.anchor + self.buffered, now))
        super()._settle(now)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, float, float, int, str]] = []  # url, start, end, status, X-Cache
        self.players: list[RecordingViewer] = []
        self.stats: viewers.Stats | None = None
        self.lag: list[tuple[float, float]] = []  # (when, ms late)


RECORDER = Recorder()


class RecordingViewer(viewers.Viewer):
    def __init__(self, session: aiohttp.ClientSession, master: str, choice: int, stats: viewers.Stats) -> None:
        super().__init__(session, master, choice, stats)
        self.buffer = TimedBuffer()
        RECORDER.players.append(self)
        RECORDER.stats = stats

    async def _get(self, url: str) -> bytes:
        started = time.monotonic()
        try:
            async with self.session.get(url) as resp:
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            RECORDER.requests.append((url, started, time.monotonic(), 0, ""))
            raise viewers.FetchFailed(f"{url}: {e!r}") from e
        RECORDER.requests.append((url, started, time.monotonic(), resp.status, resp.headers.get("X-Cache", "")))
        if resp.status != 200:
            raise viewers.FetchFailed(f"{url}: status {resp.status}")
        return body


async def _lag(samples: list[tuple[float, float]]) -> None:
    while True:
        t = time.monotonic()
        await asyncio.sleep(viewers.LAG_TICK)
        now = time.monotonic()
        samples.append((now, (now - t - viewers.LAG_TICK) * 1000))


@contextlib.asynccontextmanager
async def playing(master: str, count: int, source: str, seed: int) -> AsyncIterator[Recorder]:
    """`count` viewers.py players following `master` until the block ends; what they recorded."""
    global RECORDER
    rec = RECORDER = Recorder()
    original = viewers.Viewer
    viewers.Viewer = RecordingViewer  # type: ignore[misc]
    task = asyncio.create_task(viewers.simulate(master, count, MAX_VIEWER_SECONDS, 2.0, seed, source))
    lag = asyncio.create_task(_lag(rec.lag))
    try:
        await asyncio.sleep(0)
        yield rec
    finally:
        task.cancel()
        lag.cancel()
        await asyncio.gather(task, lag, return_exceptions=True)
        viewers.Viewer = original  # type: ignore[misc]
        end = time.monotonic()
        for v in rec.players:
            v.buffer.finish(end)


def viewer_window(rec: Recorder, t0: float, t1: float) -> dict[str, Any]:
    """What the viewers saw between t0 and t1: segments completed, latency, stalls, errors."""
    seg = [(e - s) * 1000 for u, s, e, st, _ in rec.requests if u.endswith(".ts") and st == 200 and t0 <= e < t1]
    errors = sum(1 for _, _, e, st, _ in rec.requests if st != 200 and t0 <= e < t1)
    events = [(a, b) for v in rec.players for a, b in v.buffer.events if a < t1 and b > t0]
    lag = [ms for t, ms in rec.lag if t0 <= t < t1]
    return {
        "segments": len(seg),
        "segment_ms": {"p50": round(percentile(seg, 50), 1), "p99": round(percentile(seg, 99), 1),
                       "max": round(max(seg, default=0.0), 1)},
        "stalls": sum(1 for a, _ in events if t0 <= a < t1),
        "stall_seconds": round(sum(min(b, t1) - max(a, t0) for a, b in events), 3),
        "stalled_viewers": sum(1 for v in rec.players if any(a < t1 and b > t0 for a, b in v.buffer.events)),
        "errors": errors,
        "loop_lag_ms_p99": round(percentile(lag, 99), 1),
    }


# --- metrics ----------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$", re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')


async def scrape(session: aiohttp.ClientSession, admin: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with session.get(url(admin) + "/metrics") as r:
        text = await r.text()
    return {(m.group(1), frozenset(LABEL.findall(m.group(2) or ""))): float(m.group(3))
            for m in SAMPLE.finditer(text)}


def by_label(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


@dataclass
class Snapshot:
    t: float
    origin: dict[str, int]
    edge: dict[tuple[str, frozenset[tuple[str, str]]], float]
    shield: dict[tuple[str, frozenset[tuple[str, str]]], float]


async def snapshot(session: aiohttp.ClientSession, proxy: int, edge: Node, shield: Node) -> Snapshot:
    t = time.monotonic()
    o, e, s = await asyncio.gather(origin_counts(session, proxy), scrape(session, edge.admin),
                                   scrape(session, shield.admin))
    return Snapshot(t, o, e, s)


def counters_window(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """Counter deltas between two snapshots: origin, shield, edge, guard, limits."""
    origin = {p: n - a.origin.get(p, 0) for p, n in b.origin.items() if n > a.origin.get(p, 0)}

    def delta_by(name: str, label: str) -> dict[str, int]:
        x, y = by_label(a.edge, name, label), by_label(b.edge, name, label)
        return {k: int(v - x.get(k, 0)) for k, v in sorted(y.items()) if v - x.get(k, 0)}

    def delta(snap_a: dict, snap_b: dict, name: str) -> int:
        return int(total(snap_b, name) - total(snap_a, name))

    return {
        "seconds": round(b.t - a.t, 2),
        "origin_requests": sum(origin.values()),
        "origin_attack_named": sum(n for p, n in origin.items()
                                   if not VIEWER_PATH.match(p) and not PROBE_PATH.match(p)),
        "origin_probe_requests": sum(n for p, n in origin.items() if PROBE_PATH.match(p)),
        "origin_playlist_requests": sum(n for p, n in origin.items() if p.endswith(".m3u8") and VIEWER_PATH.match(p)),
        "origin_segment_requests": sum(n for p, n in origin.items() if p.endswith(".ts") and VIEWER_PATH.match(p)),
        "shield_upstream": delta(a.shield, b.shield, "livecdn_upstream_requests_total"),
        "edge_upstream": delta(a.edge, b.edge, "livecdn_upstream_requests_total"),
        "edge_requests": delta_by("livecdn_requests_total", "cache"),
        "guard_rejections": delta_by("livecdn_guard_rejections_total", "reason"),
        "guard_refreshes": delta(a.edge, b.edge, "livecdn_guard_refreshes_total"),
        "rate_limited": delta_by("livecdn_rate_limited_total", "limit"),
        "prefetches": delta(a.edge, b.edge, "livecdn_prefetches_total"),
    }


# --- the attacker (its own process) ------------------------------------------------

class Exchange:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.host_header = f"Host: {host}:{port}\r\n".encode()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, str]:
        """(status, X-Cache) of one GET; the body is read and dropped."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port,
                                                                     local_addr=(self.source, 0))
        reader, writer = self.reader, self.writer
        assert reader is not None
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.host_header + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close, xcache = None, False, False, ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
            elif name == b"x-cache":
                xcache = value.strip().decode("latin-1")
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await reader.readexactly(length)
        elif status not in (204, 304):
            await reader.read()  # until the server closes
            close = True
        if close:
            self.close()
        return status, xcache


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
    rng = random.Random(seed)
    left = requests
    outcomes: Counter[tuple[str, str, str]] = Counter()  # (kind, status, X-Cache)
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal left
        conn = Exchange(host, port, source)
        try:
            while left > 0 and time.monotonic() < deadline:
                left -= 1
                kind, path = attack_path(rng)
                t = time.monotonic()
                try:
                    status, xcache = await asyncio.wait_for(conn.get(path), ATTACK_REQUEST_TIMEOUT)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError, IndexError) as e:
                    outcomes[(kind, "error", type(e).__name__)] += 1
                    conn.close()
                    await asyncio.sleep(0.05)
                    continue
                latencies.append((time.monotonic() - t) * 1000)
                outcomes[(kind, str(status), xcache)] += 1
        finally:
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


def attacker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="guard.py attacker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default=ATTACKER_SOURCE)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--connections", type=int, default=ATTACK_CONNECTIONS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=300.0)
    a = p.parse_args(argv)
    result = asyncio.run(attack(a.host, a.port, a.source, a.requests, a.connections, a.seed, a.max_seconds))
    print(json.dumps(result), flush=True)
    return 0


# --- the delaying, counting proxy (its own process) --------------------------------

async def serve_proxy(port: int, upstream: str, delay_ms: int) -> None:
    """benchorigin.py's counting pass-through, with segment (.ts) answers held `delay_ms` first."""
    app = web.Application()
    app[COUNTS] = Counter()
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
    forward = forwarding_handler(upstream.rstrip("/"))

    async def handle(request: web.Request) -> web.Response:
        if request.path.endswith(".ts"):
            await asyncio.sleep(delay_ms / 1000)
        return await forward(request)

    app.router.add_get("/_counts", counts)
    app.router.add_get("/_ready", ready)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await asyncio.Event().wait()
    finally:
        await app[SESSION].close()
        await runner.cleanup()


def proxy_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="guard.py proxy")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_proxy(a.port, a.upstream, a.delay_ms))
    return 0


# --- topology -----------------------------------------------------------------------

def write_config(path: Path, origin_port: int, upstream: int, shield: Node, edge: Node, *, streams: list[str],
                 guard: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                 segment_bytes: int | None = None, renditions: list[dict[str, Any]] | None = None) -> None:
    """datapath.write_topology (origin at `upstream`, the built-in one on `origin_port`), plus limits/renditions."""
    builtin: dict[str, Any] = {"listen": f"127.0.0.1:{origin_port}", "mode": "synthetic", "streams": streams,
                               "target_duration": TARGET_DURATION, "window": WINDOW}
    if segment_bytes:
        builtin["segment_bytes"] = segment_bytes
    write_topology(path, url(upstream), [shield, edge], {"memory_bytes": "256MiB", "disk_path": ""},
                   guard, builtin=builtin)
    extra = []
    if limits:
        extra.append("[limits]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in limits.items()))
    for r in renditions or []:
        extra.append("[[origin.builtin.renditions]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items()))
    if extra:
        with path.open("a") as f:
            f.write("\n" + "\n".join(extra))


async def start_cdn(procs: Processes, session: aiohttp.ClientSession, config_writer: Any,
                    upstream_cmd: Any) -> tuple[int, Node, Node]:
    """Start origin, its counting proxy, shield, edge; (proxy port, shield, edge)."""
    origin_port = free_port()
    shield, edge = Node.new("shields", "shield-1"), Node.new("edges", "edge-1")
    proxy = await upstream_cmd(url(origin_port))
    config = config_writer(origin_port, proxy, shield, edge)
    procs.start("origin", LIVECDN + ["origin", "--config", str(config), "--node", "origin", "--log-level", "warning"])
    await wait_ready(procs, "origin", url(origin_port) + "/healthz", session)
    await start_nodes(procs, session, config, [shield, edge])
    await wait_live(session, url(origin_port))
    return proxy, shield, edge


CDN_PROCESSES = ["edge-1", "shield-1", "origin", "proxy"]


# --- figure 1: attack -----------------------------------------------------------------

async def probe_new_streams(session: aiohttp.ClientSession, base: str, names: list[str],
                            spacing: float, attacking: Any) -> list[int]:
    """A legitimate player's first request for streams the edge never saw, one every `spacing` s
    while `attacking()` is true."""
    statuses = []
    for name in names:
        if not attacking():
            break
        try:
            async with session.get(f"{base}/{name}/master.m3u8") as r:
                await r.read()
                statuses.append(r.status)
        except (TimeoutError, aiohttp.ClientError):
            statuses.append(0)
        await asyncio.sleep(spacing)
    return statuses


async def attack_run(procs: Processes, session: aiohttp.ClientSession, plan: Plan, case: str,
                     limits: dict[str, Any] | None, run: int) -> dict[str, Any]:
    streams = ["live"] + [f"probe{i}" for i in range(PROBE_STREAMS)]

    def config(origin_port: int, proxy: int, shield: Node, edge: Node) -> Path:
        path = procs.workdir / f"attack-{case}-{run}.toml"
        write_config(path, origin_port, proxy, shield, edge, streams=streams, limits=limits)
        return path

    try:
        proxy, shield, edge = await start_cdn(
            procs, session, config, lambda up: start_bench_origin(procs, session, "proxy", up))
        base = url(edge.port)
        probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(PROBE_SOURCE, 0)),
                                      timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with playing(base + "/live/master.m3u8", ATTACK_VIEWERS, VIEWER_SOURCE, run + 1) as rec:
                await asyncio.sleep(plan.warmup)
                s0 = await snapshot(session, proxy, edge, shield)
                await asyncio.sleep(plan.before)
                s1 = await snapshot(session, proxy, edge, shield)
                procs.start("attacker", [PY, str(Path(__file__).resolve()), "attacker", "--port", str(edge.port),
                                         "--requests", str(plan.attack_requests), "--seed", str(run + 1),
                                         "--max-seconds", str(plan.attack_timeout)])
                attacker = procs.running["attacker"]
                await asyncio.sleep(0.5)  # the attacker's own start-up
                probing = asyncio.create_task(probe_new_streams(probe, base, streams[1:], 0.4,
                                                                lambda: attacker.poll() is None))
                deadline = time.monotonic() + plan.attack_timeout + 30
                while procs.running["attacker"].poll() is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError("attacker still running past its own time limit")
                    await asyncio.sleep(0.1)
                s2 = await snapshot(session, proxy, edge, shield)
                probes = await probing
                if procs.running["attacker"].returncode != 0:
                    raise RuntimeError(f"attacker failed:\n{procs.log_tail('attacker')}")
                result = json.loads(procs.output("attacker"))
                procs.stop(["attacker"])
                await asyncio.sleep(max(0.0, s2.t + (s2.t - s1.t) - time.monotonic()))
                s3 = await snapshot(session, proxy, edge, shield)
        finally:
            await probe.close()
    finally:
        procs.stop(["attacker", *CDN_PROCESSES])
    windows = {
        "before": {**counters_window(s0, s1), "viewers": viewer_window(rec, s0.t, s1.t)},
        "attack": {**counters_window(s1, s2), "viewers": viewer_window(rec, s1.t, s2.t)},
        "after": {**counters_window(s2, s3), "viewers": viewer_window(rec, s2.t, s3.t)},
    }
    a, b = windows["attack"], windows["after"]
    # The probes' few legitimate fetches (one per tier each) are not the attack's.
    caused = {k: (a[k] - a["origin_probe_requests"]) - (b[k] - b["origin_probe_requests"])
              for k in ("origin_requests", "shield_upstream", "edge_upstream")}
    caused["origin_attack_named"] = a["origin_attack_named"]
    return {"case": case, "run": run, "attacker": result, "windows": windows, "caused": caused,
            "probe_new_stream_statuses": probes,
            "viewers_playing": sum(v.buffer.anchor is not None for v in rec.players),
            "viewer_errors_total": rec.stats.errors if rec.stats else None,
            "viewer_error_samples": rec.stats.error_samples if rec.stats else []}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def summarize_attack(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of the figures of one limit setting."""
    def med(get: Any) -> float:
        return _median([get(r) for r in runs])

    def med_map(get: Any) -> dict[str, float]:
        keys = sorted({k for r in runs for k in get(r)})
        return {k: med(lambda r, k=k: get(r).get(k, 0)) for k in keys}

    out: dict[str, Any] = {
        "runs": len(runs),
        "attack_requests": med(lambda r: r["attacker"]["answered"]),
        "attack_seconds": med(lambda r: r["attacker"]["seconds"]),
        "attack_per_second": med(lambda r: r["attacker"]["per_second"]),
        "attack_status": med_map(lambda r: r["attacker"]["status"]),
        "attack_latency_ms_p99": med(lambda r: r["attacker"]["latency_ms"]["p99"]),
        "caused": {k: med(lambda r, k=k: r["caused"][k]) for k in runs[0]["caused"]},
        "probe_new_stream_statuses": [r["probe_new_stream_statuses"] for r in runs],
        "viewers_playing": min(r["viewers_playing"] for r in runs),
        "windows": {},
    }
    for w in ("before", "attack", "after"):
        ws = [r["windows"][w] for r in runs]
        out["windows"][w] = {
            "seconds": _median([x["seconds"] for x in ws]),
            "origin_requests": _median([x["origin_requests"] for x in ws]),
            "origin_attack_named": _median([x["origin_attack_named"] for x in ws]),
            "origin_playlist_requests": _median([x["origin_playlist_requests"] for x in ws]),
            "origin_segment_requests": _median([x["origin_segment_requests"] for x in ws]),
            "shield_upstream": _median([x["shield_upstream"] for x in ws]),
            "edge_upstream": _median([x["edge_upstream"] for x in ws]),
            "guard_rejections": {k: _median([x["guard_rejections"].get(k, 0) for x in ws])
                                 for k in sorted({k for x in ws for k in x["guard_rejections"]})},
            "guard_refreshes": _median([x["guard_refreshes"] for x in ws]),
            "rate_limited": {k: _median([x["rate_limited"].get(k, 0) for x in ws])
                             for k in sorted({k for x in ws for k in x["rate_limited"]})},
            "viewer_segments": _median([x["viewers"]["segments"] for x in ws]),
            "viewer_p50_ms": _median([x["viewers"]["segment_ms"]["p50"] for x in ws]),
            "viewer_p99_ms": _median([x["viewers"]["segment_ms"]["p99"] for x in ws]),
            "viewer_max_ms": _median([x["viewers"]["segment_ms"]["max"] for x in ws]),
            "stalls": _median([x["viewers"]["stalls"] for x in ws]),
            "stalls_worst_run": max(x["viewers"]["stalls"] for x in ws),
            "stall_seconds": _median([x["viewers"]["stall_seconds"] for x in ws]),
            "viewer_errors": _median([x["viewers"]["errors"] for x in ws]),
            "loop_lag_ms_p99": _median([x["viewers"]["loop_lag_ms_p99"] for x in ws]),
        }
    return out


ATTACK_CASES = (("default limits", None), ("miss_rate = 0 (guard alone)", {"miss_rate": 0}))


async def attack_figure(procs: Processes, session: aiohttp.ClientSession, plan: Plan) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ATTACK_CASES}
    for run in range(plan.attack_runs):
        for i, (name, limits) in enumerate(ATTACK_CASES):  # interleaved: noise hits both alike
            r = await attack_run(procs, session, plan, f"c{i}", limits, run)
            runs[name].append(r)
            a = r["attacker"]
            print(f"  [attack {name}, run {run + 1}/{plan.attack_runs}: {a['answered']} answered in "
                  f"{a['seconds']:.1f}s, caused origin {r['caused']['origin_requests']}, "
                  f"stalls {r['windows']['attack']['viewers']['stalls']}]", flush=True)
    return {"viewers": ATTACK_VIEWERS, "requests": plan.attack_requests, "connections": ATTACK_CONNECTIONS,
            "cases": {name: summarize_attack(rs) for name, rs in runs.items()},
            "runs": {name: rs for name, rs in runs.items()}}


def print_attack(fig: dict[str, Any]) -> None:
    print(f"\n1. attack: {fig['viewers']} viewers + {fig['requests']} random-name requests from one client "
          f"({fig['connections']} keep-alive connections), median of "
          f"{next(iter(fig['cases'].values()))['runs']} run(s)")
    for name, c in fig["cases"].items():
        w = c["windows"]
        b, a, f = w["before"], w["attack"], w["after"]
        print(f"  -- {name}")
        print(f"  {'attack requests answered / seconds / per s':<46} {c['attack_requests']:g} / "
              f"{c['attack_seconds']:g} s / {c['attack_per_second']:g}")
        print(f"  {'attack status mix':<46} " + ", ".join(f"{k}: {v:g}" for k, v in c["attack_status"].items()))
        print(f"  {'window':<46} {'before':>10} {'attack':>10} {'after':>10}")
        rows = [("seconds", "seconds"), ("origin requests", "origin_requests"),
                ("  of which attack-named paths", "origin_attack_named"),
                ("  viewer playlists / segments", None),
                ("shield upstream requests", "shield_upstream"), ("edge upstream requests", "edge_upstream"),
                ("guard refreshes", "guard_refreshes"),
                ("viewer segments fetched", "viewer_segments"), ("viewer segment p50 ms", "viewer_p50_ms"),
                ("viewer segment p99 ms", "viewer_p99_ms"), ("viewer segment max ms", "viewer_max_ms"),
                ("viewer stalls (worst run)", "stalls"), ("viewer request errors", "viewer_errors"),
                ("viewer event-loop lag p99 ms", "loop_lag_ms_p99")]
        for label, key in rows:
            if key is None:
                vals = [f"{x['origin_playlist_requests']:g}/{x['origin_segment_requests']:g}" for x in (b, a, f)]
            elif key == "stalls":
                vals = [f"{x['stalls']:g} ({x['stalls_worst_run']})" for x in (b, a, f)]
            else:
                vals = [f"{x[key]:g}" for x in (b, a, f)]
            print(f"  {label:<46} {vals[0]:>10} {vals[1]:>10} {vals[2]:>10}")
        for label, key in (("guard rejections by reason", "guard_rejections"), ("rate limited (429) by limit",
                                                                                "rate_limited")):
            keys = sorted(set(b[key]) | set(a[key]) | set(f[key]))
            for k in keys or ["-"]:
                vals = [f"{x[key].get(k, 0):g}" for x in (b, a, f)]
                print(f"  {(label + ': ' + k):<46} {vals[0]:>10} {vals[1]:>10} {vals[2]:>10}")
        cz = c["caused"]
        print(f"  {'CAUSED by the attack (attack - after window)':<46} origin {cz['origin_requests']:g}, "
              f"shield upstream {cz['shield_upstream']:g}, edge upstream {cz['edge_upstream']:g}; "
              f"attack-named paths at origin {cz['origin_attack_named']:g}")
        print(f"  {'legit first request of a new stream in attack':<46} statuses {c['probe_new_stream_statuses']}")
    print("  goal: viewer stalls 0; 'after' = no-attack baseline of the attack's length, same viewers")


# --- figure 2: false positives and filter memory (in-process) ---------------------------

def false_positives(contains: Any, names: int, rng: random.Random, directory: str) -> tuple[int, int]:
    hits = 0
    for _ in range(names):
        if contains(f"{directory}{rng.getrandbits(64):016x}.ts"):
            hits += 1
    return hits, names


def filter_figure(plan: Plan) -> dict[str, Any]:
    sys.path.insert(0, str(TREE))
    from edge.guard import Generations, StreamGuard
    from livecdn.cache.freshness import Lifetime
    from livecdn.cache.stored import Stored
    from livecdn.config import GuardSettings, Rendition
    from livecdn.media.kinds import Kind
    from livecdn.origin.timeline import Timeline, master_playlist, media_playlist

    s = GuardSettings()
    rng = random.Random(4)
    started = time.monotonic()
    # Worst case: both generations at capacity (the next name rotates).
    g = Generations(s.names_per_generation, s.false_positive_rate)
    for i in range(2 * s.names_per_generation):
        g.add(f"/live/720p/seg{i}.ts")
    assert g.previous is not None and g.current.count == s.names_per_generation
    worst_hits, n = false_positives(g.__contains__, plan.fp_names, rng, "/live/720p/")

    # 24 h of a live stream through StreamGuard.learn(): 2 s segments, window 6, 2 renditions;
    # each media playlist learned once per target duration as each new segment appears, the
    # master every 30 s (its lifetime). An edge refreshes a live playlist about twice per target
    # duration; the extra refresh re-announces the same names, which a Bloom add leaves as is.
    guard = StreamGuard(s, None, "bench-guard")  # type: ignore[arg-type]  # learn() needs no engine
    renditions = (Rendition("720p", 2_000_000, 1280, 720), Rendition("360p", 600_000, 640, 360))
    timeline = Timeline(0.0, TARGET_DURATION, WINDOW)
    live = Lifetime(TARGET_DURATION / 2, 2.0, 30.0)
    master = master_playlist(renditions).encode()
    segments = int(plan.hours * 3600 / TARGET_DURATION)
    marks = {0, 1, 2, 3, 6, 12, 18, 24}
    memory: list[dict[str, Any]] = []
    refused_window = 0
    learned = 0
    for seq in range(segments + 1):
        now = timeline.published_at(seq) + 0.01
        if seq * TARGET_DURATION % 30 == 0:
            guard.learn(Stored("/live/master.m3u8", 200, (), master, now, Lifetime(30, 2, 30), Kind.MASTER))
        for r in renditions:
            body = media_playlist(timeline, now)
            assert body is not None
            guard.learn(Stored(f"/live/{r.name}/index.m3u8", 200, (), body.encode(), now, live, Kind.LIVE))
            learned += 1
        hour = seq * TARGET_DURATION / 3600
        if hour in marks:
            streams = guard._streams  # noqa: SLF001 - the benchmark inspects the guard's state
            for r in renditions:  # the window just announced must never be refused
                names = streams[f"/live/{r.name}/"].names
                refused_window += sum(f"/live/{r.name}/seg{q}.ts" not in names
                                      for q in timeline.in_playlist(now))
            st = streams["/live/720p/"].names
            memory.append({"hour": int(hour), "bytes": guard.nbytes, "streams": guard.streams,
                           "generations": 2 if st.previous is not None else 1,
                           "current_names": st.current.count})
    stream = guard._streams["/live/720p/"].names  # noqa: SLF001
    real_hits, _ = false_positives(stream.__contains__, plan.fp_names, rng, "/live/720p/")
    rate = s.false_positive_rate
    return {
        "settings": {"false_positive_rate": rate, "names_per_generation": s.names_per_generation},
        "names_tested": n,
        "fp_worst": {"hits": worst_hits, "rate": worst_hits / n, "state": "both generations at capacity"},
        "fp_after_24h": {"hits": real_hits, "rate": real_hits / n,
                         "state": f"720p stream after {plan.hours:g} h ({stream.current.count} names in current "
                                  f"generation, previous {'full' if stream.previous is not None else 'none'})"},
        "goal_rate": 2 * rate,
        "memory": memory,
        "playlists_learned": learned,
        "window_names_refused": refused_window,
        "seconds": round(time.monotonic() - started, 1),
    }


def print_filter(fig: dict[str, Any]) -> None:
    goal = fig["goal_rate"]
    print(f"\n2. guard filter, in-process (default GuardSettings: fp rate "
          f"{fig['settings']['false_positive_rate']:g}/generation, "
          f"{fig['settings']['names_per_generation']} names/generation)")
    for label, key in (("false positives, worst case", "fp_worst"), ("false positives, after 24 h", "fp_after_24h")):
        f = fig[key]
        verdict = "ok" if f["rate"] <= goal else "OVER"
        print(f"  {label:<30} {f['hits']}/{fig['names_tested']} = {f['rate'] * 100:.4f}%   goal <= "
              f"{goal * 100:.2f}%: {verdict}   ({f['state']})")
    print(f"  filter memory over a simulated 24 h stream ({fig['playlists_learned']} media playlists learned, "
          f"{fig['seconds']:g} s):")
    print(f"  {'hour':>6} {'bytes':>9} {'streams':>8} {'720p generations':>17} {'names in current':>17}")
    for m in fig["memory"]:
        print(f"  {m['hour']:>6} {m['bytes']:>9} {m['streams']:>8} {m['generations']:>17} {m['current_names']:>17}")
    print(f"  window names refused at those marks: {fig['window_names_refused']} (must be 0); goal: memory flat")


# --- figure 3: prefetch ----------------------------------------------------------------------

def first_requests(rec: Recorder, since: float) -> list[tuple[str, str, float]]:
    """(segment, X-Cache, ms) of the first viewer request of each segment first asked for after `since`."""
    first: dict[str, tuple[float, str, float, int]] = {}
    for u, s, e, st, xc in rec.requests:
        if u.endswith(".ts") and (u not in first or s < first[u][0]):
            first[u] = (s, xc, (e - s) * 1000, st)
    return [(u.rsplit("/", 1)[1], xc, ms) for u, (s, xc, ms, st) in sorted(first.items(), key=lambda x: x[1][0])
            if s >= since and st == 200]


async def prefetch_run(procs: Processes, session: aiohttp.ClientSession, plan: Plan, prefetch: bool,
                       run: int) -> dict[str, Any]:
    async def delaying_proxy(upstream: str) -> int:
        port = free_port()
        procs.start("proxy", [PY, str(Path(__file__).resolve()), "proxy", "--port", str(port),
                              "--upstream", upstream, "--delay-ms", str(PREFETCH_DELAY_MS)])
        await wait_ready(procs, "proxy", url(port) + "/_ready", session)
        return port

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
        prefetch_hits = int(total(s1.edge, "livecdn_prefetch_hits_total")
                            - total(s0.edge, "livecdn_prefetch_hits_total"))
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
            "viewer_errors": rec.stats.errors if rec.stats else None}


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


async def prefetch_figure(procs: Processes, session: aiohttp.ClientSession, plan: Plan) -> dict[str, Any]:
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


# --- main -------------------------------------------------------------------------------------

def _revision() -> str:
    if TREE != ROOT:
        return f"{TREE.name} (exported tree)"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edge", "livecdn", "shield"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


async def run_all(procs: Processes, plan: Plan, quick: bool, only: set[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": quick,
                              "cpus": os.cpu_count(), "revision": _revision(), "load_at_start": os.getloadavg()}
    async with aiohttp.ClientSession() as session:
        if "attack" in only:
            report["attack"] = await attack_figure(procs, session, plan)
            print_attack(report["attack"])
        if "filter" in only:
            report["filter"] = filter_figure(plan)
            print_filter(report["filter"])
        if "prefetch" in only:
            report["prefetch"] = await prefetch_figure(procs, session, plan)
            print_prefetch(report["prefetch"])
    return report


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(report))
    for fig in ("attack", "prefetch"):
        if fig in out:
            out[fig].pop("runs", None)
    return out


def _terminate(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "attacker":
        return attacker_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        return proxy_main(sys.argv[2:])
    p = argparse.ArgumentParser(description="livecdn issue #4 figures: attack, guard filter, prefetch.")
    p.add_argument("--quick", action="store_true", help="20 000 attack requests, one run each (~4 min)")
    p.add_argument("--only", default="attack,filter,prefetch", help="comma-separated subset of the figures")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--head", action="store_true",
                     help="run the nodes from the last commit (git archive HEAD into the temp dir), "
                          "not the working tree others may be editing")
    src.add_argument("--tree", type=Path, help="run the nodes from this source tree")
    args = p.parse_args()
    plan = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="livecdn-guard-"))
    global TREE
    if args.tree:
        TREE = args.tree.resolve()
    elif args.head:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        TREE = workdir / f"head-{rev}"
        TREE.mkdir()
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(TREE)], input=archive, check=True)
    procs = Processes(workdir, cwd=TREE)
    try:
        report = asyncio.run(run_all(procs, plan, args.quick, only))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    partial = "" if only == {"attack", "filter", "prefetch"} else "-partial"
    save("guard", report, ("-quick" if args.quick else "") + partial)
    print(json.dumps(_compact(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
